"""What the web's views call, built once per process by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from pyramid.registry import Registry
from pyramid.request import Request

from ntq import notify
from ntq.config import Settings
from ntq.store.db import Store


@dataclass(frozen=True)
class Services:
    """The settings, the store (its request pool behind ``request.db``) and the notifier,
    held by the registry as ``registry.ntq``."""

    settings: Settings
    store: Store
    notifier: notify.Notifier
    enqueue_hints: notify.EnqueueHints

    def close(self) -> None:
        """Flush the counters and close the pools: for a process that keeps running after
        it is done with the app (tests, tools)."""
        self.notifier.tally.flush()
        self.store.dispose()


def of(registry: Registry) -> Services:
    """The registry's services."""
    found: Services = registry.ntq
    return found


def services(request: Request) -> Services:
    """The services of the application serving ``request``."""
    return of(request.registry)
