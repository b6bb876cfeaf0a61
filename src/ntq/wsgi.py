"""``application`` for a WSGI server whose workers are gevent-patched, as ntq's web relies on
(body deadlines, cooperative database calls): ``gunicorn -k gevent ntq.wsgi:application``."""

from __future__ import annotations

from ntq.app import make_app
from ntq.config import load_settings
from ntq.embedded import resolve

application = make_app(resolve(load_settings()))
