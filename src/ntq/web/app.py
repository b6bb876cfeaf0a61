"""The WSGI application factory: a table of contents."""

from __future__ import annotations

from typing import Any

import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.request import Request
from sqlalchemy.orm import Session, sessionmaker

from ntq import metrics, notify
from ntq.config import Settings
from ntq.store import db
from ntq.store.db import make_engine, make_session_factory


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
    # hot path, which commits on its own; separate pools never switch a connection's mode.
    # No overflow: under load, requests wait for a pooled connection instead of opening
    # (and, on return, closing) new ones, each a new PostgreSQL backend.
    half = max(1, pool_size // 2)
    engine = make_engine(settings.database_url, pool_size=half, max_overflow=0)
    config.registry.ntq_settings = settings
    config.registry.ntq_engine = engine
    autocommit = make_engine(settings.database_url, pool_size=half, max_overflow=0,
                             autocommit=True)
    config.registry.ntq_autocommit = autocommit
    notifier = notify.Notifier(settings, notify.client(settings.redis_url),
                               metrics.Tally(autocommit))
    config.registry.ntq_notifier = notifier
    config.registry.ntq_enqueue_hints = notify.EnqueueHints(notifier)
    _include_db(config, make_session_factory(engine))
    config.include("ntq.web.tweens")
    config.include("ntq.web.api")
    config.include("ntq.web.openapi")
    return config.make_wsgi_app()


def _retry_attempts(request: Request) -> int | None:
    """One try for a request with a body (the enqueues, which retry their own statement):
    retrying would buffer the whole body before the views' size limit applies. The
    default number of tries for the rest."""
    has_body = request.content_length or "Transfer-Encoding" in request.headers
    return 1 if has_body else None


def _include_db(config: Configurator, factory: sessionmaker[Session]) -> None:
    """``request.db``: a session joined to the request's transaction (pyramid_tm), which
    pyramid_retry runs again when it failed in a way a new try may fix."""
    config.include("pyramid_tm")
    config.include("pyramid_retry")

    def db(request: Request) -> Session:
        session = factory()
        # "changed": ntq writes with Core statements the ORM does not track, so the
        # transaction must commit without an explicit mark_changed().
        zope.sqlalchemy.register(session, transaction_manager=request.tm,
                                 initial_state=zope.sqlalchemy.datamanager.STATUS_CHANGED)
        return session

    config.add_request_method(db, "db", reify=True)
