"""The WSGI application factory: a table of contents."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request

from ntq import metrics, notify
from ntq.config import Settings
from ntq.store import db


def make_app(settings: Settings, pool_size: int = 10) -> Any:
    """Build the Pyramid app for fully resolved ``settings`` (URLs filled in)."""
    assert settings.database_url
    assert settings.redis_url
    config = Configurator(settings={
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "tm.annotate_user": False,
        # A request transaction that failed on a lost connection, or lost a deadlock,
        # runs again from the start (pyramid_retry; errors.py marks which failures).
        "retry.attempts": db.ATTEMPTS,
        "retry.activate_hook": _retry_attempts,
    })
    # Half the connections serve request transactions, half the single-statement enqueue
    # hot path, which commits on its own.
    half = max(1, pool_size // 2)
    store = db.connect(settings.database_url, pool_size=half, requests=half)
    config.registry.ntq_settings = settings
    config.registry.ntq_store = store
    notifier = notify.Notifier(settings, notify.client(settings.redis_url),
                               metrics.Tally(store))
    config.registry.ntq_notifier = notifier
    config.registry.ntq_enqueue_hints = notify.EnqueueHints(notifier)
    _include_db(config, store)
    config.include("ntq.web.tweens")
    config.include("ntq.web.api")
    return config.make_wsgi_app()


def _retry_attempts(request: Request) -> int | None:
    """One try for a request with a body (the enqueues, which retry their own statement):
    retrying would buffer the whole body before the views' size limit applies. The
    default number of tries for the rest."""
    has_body = request.content_length or "Transfer-Encoding" in request.headers
    return 1 if has_body else None


def _include_db(config: Configurator, store: db.Store) -> None:
    """``request.db``: a session joined to the request's transaction (pyramid_tm), which
    pyramid_retry runs again when it failed in a way a new try may fix."""
    config.include("pyramid_tm")
    config.include("pyramid_retry")
    config.add_request_method(lambda request: db.joined_session(store, request.tm), "db",
                              reify=True)
