"""The HTTP API: the Pyramid app factory, its WSGI entry, the gunicorn server, tweens and
the API views (``web.api``). Views call the store and the notifier; nothing below imports web."""
