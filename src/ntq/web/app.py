"""The WSGI application factory: a table of contents."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator

from ntq import metrics, notify
from ntq.config import Settings
from ntq.store import db
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
    # hot path, which commits on its own.
    half = max(1, pool_size // 2)
    store = db.connect(settings.database_url, pool_size=half, requests=half)
    notifier = notify.connect(settings, metrics.Tally(store))
    return Services(settings, store, notifier, notify.EnqueueHints(notifier))
