"""The requeue poller and cleanup: the guarantee behind Redis's hints.

Every ``NTQ_REQUEUE_INTERVAL`` seconds the poller sweeps PENDING tasks whose due time has
passed, oldest first, and pushes their ids to the queue in batches. It pushes only while
the queue list is short, so the list cannot grow without bound while no worker consumes.
Each round runs under a transaction-level advisory lock: two pollers are harmless, one of
them simply skips the round. Cleanup deletes finished tasks older than the retention and
folds the ``/metrics`` counters of processes gone quiet into one row each.
"""

from __future__ import annotations

import time

import structlog

from ntq import metrics, notify
from ntq.config import Settings
from ntq.store import counters, db, transitions
from ntq.store.db import DatabaseError, Db, Store

log = structlog.get_logger(__name__)

LOCK_KEY = 0x6E7471  # "ntq"
BATCH = 1000
LOW_WATER = 1000  # push more only while the queue list holds fewer ids than this
BUSY_PAUSE = 0.1
CLEANUP_EVERY = 60.0


class Requeue:
    """The poller's state: where the current sweep is, when cleanup last ran."""

    def __init__(self, settings: Settings, store: Store, notifier: notify.Notifier) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.cursor: transitions.Cursor | None = None
        self.last_cleanup = 0.0
        self.stopping = False

    def run(self) -> None:
        """Poll until :meth:`request_stop`."""
        log.info("requeue.start", interval=self.settings.requeue_interval)
        while not self.stopping:
            busy = self._round_safely()
            self._sleep(BUSY_PAUSE if busy else self.settings.requeue_interval)
        log.info("requeue.stop")

    def request_stop(self) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, seconds))

    def _round_safely(self) -> bool:
        try:
            return self.round()
        except (DatabaseError, notify.Unavailable) as exc:
            log.warning("requeue.round_failed", error=str(exc).splitlines()[0])
            return False
        except Exception:  # one bad row must not stop the poller that every task relies on
            log.exception("requeue.round_failed")
            return False

    def round(self) -> bool:
        """One locked round; True if a backlog remains to push right away. Run again on a
        fresh connection if its own was lost (pushes are hints: pushing twice is harmless)."""
        return bool(db.locked(self.store, LOCK_KEY, self._locked_round))

    def _locked_round(self, conn: Db) -> bool:
        busy = self._push_overdue(conn)
        self._push_notices(conn)
        if time.monotonic() - self.last_cleanup >= CLEANUP_EVERY:
            self._cleanup(conn)
        return busy

    def _push_overdue(self, conn: Db) -> bool:
        room = LOW_WATER - self.notifier.backlog()
        if room <= 0:
            return True
        batch = transitions.overdue(conn, min(BATCH, room), after=self.cursor)
        if batch and self.notifier.push(task_id for _, task_id in batch):
            log.info("requeue.pushed", count=len(batch))
        full = len(batch) == min(BATCH, room)
        self.cursor = batch[-1] if full else None
        return full

    def _push_notices(self, conn: Db) -> None:
        """Cancelled tasks whose DELETE notice is owed and overdue (few, so no sweep)."""
        ids = transitions.overdue_notices(conn, BATCH)
        if ids:
            self.notifier.push(ids)

    def _cleanup(self, conn: Db) -> None:
        self.last_cleanup = time.monotonic()
        deleted = transitions.cleanup(conn, self.settings.cleanup_after_days)
        if deleted:
            log.info("requeue.cleaned", deleted=deleted)
        counters.fold(conn, metrics.FOLD_AFTER)
