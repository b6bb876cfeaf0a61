"""``application`` for a WSGI server whose workers are gevent-patched, as ntq's web relies on
(body deadlines, cooperative database calls): ``gunicorn -k gevent ntq.web.wsgi:application``."""

from __future__ import annotations

from ntq.config import load_settings
from ntq.embedded.servers import resolve
from ntq.web.app import make_app

application = make_app(resolve(load_settings()))
