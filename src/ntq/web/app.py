"""The WSGI application factory: a table of contents."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator

from ntq import metrics, notify
from ntq.config import Settings
from ntq.store.db import make_engine, make_session_factory
from ntq.web.services import Services


def make_app(settings: Settings, pool_size: int = 10) -> Any:
    """Build the Pyramid app for fully resolved ``settings`` (URLs filled in)."""
    config = Configurator()
    config.registry.ntq = _services(settings, pool_size)
    config.include("ntq.web.transactions")
    config.include("ntq.web.tweens")
    config.include("ntq.web.api")
    config.include("ntq.web.openapi")
    return config.make_wsgi_app()


def _services(settings: Settings, pool_size: int) -> Services:
    assert settings.database_url
    # Half the connections serve request transactions, half the single-statement enqueue
    # hot path, which commits on its own; separate pools never switch a connection's mode.
    # No overflow: under load, requests wait for a pooled connection instead of opening
    # (and, on return, closing) new ones, each a new PostgreSQL backend.
    half = max(1, pool_size // 2)
    engine = make_engine(settings.database_url, pool_size=half, max_overflow=0)
    autocommit = make_engine(settings.database_url, pool_size=half, max_overflow=0,
                             autocommit=True)
    notifier = notify.connect(settings, metrics.Tally(autocommit))
    return Services(settings, engine, autocommit, make_session_factory(engine), notifier,
                    notify.EnqueueHints(notifier))
