"""Long-running processes with signal handling: ``ntq worker`` and ``ntq requeue``."""

from __future__ import annotations

import signal

from ntq.config import Settings
from ntq.store import db


def run_worker(settings: Settings, grace: float) -> None:
    """Deliver tasks until SIGTERM/SIGINT (twice to stop at once). The process must
    already be patched by :func:`ntq.green.patch`."""
    import gevent

    from ntq.worker import Worker

    assert settings.database_url
    # A fixed pool: attempts hold a connection only to acquire, and outcomes are written
    # in batches, so a few connections serve hundreds of attempts in flight.
    store = db.connect(settings.database_url, pool_size=min(settings.worker_concurrency, 10))
    worker = Worker(settings, store, settings.worker_concurrency, grace=grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, worker.request_stop)
    worker.run()
    store.dispose()


def run_requeue(settings: Settings) -> None:
    """Requeue overdue tasks and clean up until SIGTERM/SIGINT."""
    from ntq import metrics, notify
    from ntq.requeue import Requeue

    assert settings.database_url
    store = db.connect(settings.database_url, pool_size=1, max_overflow=1)
    poller = Requeue(settings, store, notify.connect(settings, metrics.Tally(store)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: poller.request_stop())
    poller.run()
    store.dispose()
