"""``application`` for any WSGI server: ``gunicorn ntq.wsgi:application``."""

from __future__ import annotations

from ntq.app import make_app
from ntq.config import load_settings
from ntq.embedded import resolve

application = make_app(resolve(load_settings()))
