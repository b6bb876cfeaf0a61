"""The worker: a bounded gevent pool fed by Redis wake-ups.

One dispatcher greenlet waits for a free slot, takes task ids from the notifier (as many
as there are free slots), acquires the due ones in one statement and spawns an attempt for
each. A second greenlet promotes scheduled retries whose time has come; a third listens for
cancellations and interrupts the attempts they name. Stop is two-staged: the first signal
stops taking tasks and lets running attempts finish within the grace period; a second
signal interrupts them (their leases expire and they are retried later).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import structlog

from ntq import delivery, metrics, notify
from ntq.config import Settings
from ntq.records import Acquired, AttemptResult, Outcome, Status, Verdict
from ntq.store import transitions
from ntq.store.db import DatabaseError, Store

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_BATCH = 100
PROMOTE_INTERVAL = 0.1
FINISH_RETRY_FOR = 60.0


class Cancelled(gevent.GreenletExit):  # type: ignore[misc]  # gevent is untyped
    """Raised inside an attempt whose task was cancelled."""


class Worker:
    """Takes due tasks and delivers them, up to ``concurrency`` at a time."""

    def __init__(
        self, settings: Settings, store: Store, concurrency: int, grace: float = 30.0
    ) -> None:
        self.settings = settings
        self.store = store
        self.grace = grace
        self.pool = gevent.pool.Pool(concurrency)
        self.session = delivery.make_session(settings, concurrency)
        self.notifier = notify.connect(settings, metrics.Tally(store))
        # task id -> (the greenlet attempting it, the task's application)
        self.running: dict[uuid.UUID, tuple[gevent.Greenlet, uuid.UUID | None]] = {}
        self.stopping = gevent.event.Event()
        self.stopped = gevent.event.Event()
        self.helpers: list[gevent.Greenlet] = []
        # Finished attempts wait here to be recorded in batches (one statement each).
        self.unrecorded: gevent.queue.JoinableQueue = gevent.queue.JoinableQueue()

    def run(self) -> None:
        """Serve until :meth:`request_stop`, then drain and return."""
        log.info("worker.start", concurrency=self.pool.size)
        self.helpers = [
            gevent.spawn(self._promote_loop),
            gevent.spawn(self._cancel_loop),
            gevent.spawn(self._finish_loop),
        ]
        dispatcher = gevent.spawn(self._dispatch_loop)
        self.stopping.wait()
        dispatcher.kill()
        self._drain()
        self.unrecorded.join(timeout=FINISH_RETRY_FOR)  # record what the attempts produced
        gevent.killall(self.helpers)
        self.stopped.set()
        log.info("worker.stop")

    def request_stop(self) -> None:
        """First signal: stop taking tasks; a second one interrupts running attempts."""
        if self.stopping.is_set():
            log.warning("worker.force_stop", running=len(self.running))
            self.pool.kill(block=False)
            return
        log.info("worker.stopping", running=len(self.running))
        self.stopping.set()

    def _drain(self) -> None:
        if not self.pool.join(timeout=self.grace):
            log.warning("worker.grace_expired", running=len(self.running))
            self.pool.kill(timeout=5)

    def _dispatch_loop(self) -> None:
        while not self.stopping.is_set():
            self.pool.wait_available()
            try:
                ids = self.notifier.take(self.pool.free_count())
                tasks = transitions.acquire(self.store, ids) if ids else []
            except (notify.Unavailable, DatabaseError) as exc:
                log.warning("worker.dispatch_failed", error=str(exc).splitlines()[0])
                gevent.sleep(1)
                continue
            except Exception:  # the loop every delivery relies on must outlive any one batch
                log.exception("worker.dispatch_failed")
                gevent.sleep(1)
                continue
            for task in tasks:
                self._start(task)

    def _start(self, task: Acquired) -> None:
        if not task.is_cancel_notice:
            self.running[task.id] = (self.pool.spawn(self._attempt, task), task.app_id)
            return
        if task.id in self.running:  # the cancel broadcast was missed: interrupt now
            self.running[task.id][0].kill(Cancelled, block=False)
        self.pool.spawn(self._notice, task)

    def _attempt(self, task: Acquired) -> None:
        structlog.contextvars.bind_contextvars(task_id=str(task.id), attempt=task.retry_count)
        try:
            result = delivery.deliver(self.session, task, self.settings)
        except Cancelled:
            result = AttemptResult(
                method=task.method,
                started=datetime.now(UTC),
                elapsed_ms=0,
                error="interrupted: task cancelled",
            )
            self._finish(task, result, Verdict(Outcome.INTERRUPTED))
            return
        except Exception as exc:
            # Escaping, it would leave the attempt unrecorded: the task would come back
            # with every expired lease, forever.
            log.exception("worker.attempt_crashed")
            result = AttemptResult(
                method=task.method,
                started=datetime.now(UTC),
                elapsed_ms=0,
                error=f"ntq could not make the request: {type(exc).__name__}",
            )
        finally:
            self.running.pop(task.id, None)
        verdict = delivery.classify(task, result, self.settings)
        log.info(
            "worker.attempt",
            outcome=verdict.decision,
            status_code=result.status_code,
            elapsed_ms=result.elapsed_ms,
            error=result.error,
        )
        self._finish(task, result, verdict)

    def _notice(self, task: Acquired) -> None:
        """Send the DELETE owed to a cancelled task's hook, and record it."""
        structlog.contextvars.bind_contextvars(task_id=str(task.id))
        result = delivery.send_cancel_notice(self.session, task)
        log.info("worker.cancel_notice", status_code=result.status_code, error=result.error)
        if self._persist(lambda: transitions.finish_notice(self.store, task, result)):
            self.notifier.attempted(
                [notify.Attempted(task.id, Outcome.CANCEL_NOTICE, result.elapsed_ms)]
            )

    def _finish(self, task: Acquired, result: AttemptResult, verdict: Verdict) -> None:
        self.unrecorded.put((task, result, verdict))

    def _finish_loop(self) -> None:
        """Record finished attempts in batches: whatever has queued up while the previous
        batch was being written goes into the next one."""
        while True:
            batch = [self.unrecorded.get()]
            while len(batch) < MAX_BATCH and not self.unrecorded.empty():
                batch.append(self.unrecorded.get_nowait())
            try:
                self._record(batch)
            except Exception:  # unrecorded, the leases expire and the tasks are retried
                log.exception("worker.record_failed", count=len(batch))
            finally:
                for _ in batch:
                    self.unrecorded.task_done()

    def _record(self, batch: list[transitions.Judged]) -> None:
        finished = self._persist(lambda: transitions.finish_many(self.store, batch))
        if finished is None:
            return  # the leases expire and the tasks are attempted again
        events = []
        for (task, result, verdict), done in zip(batch, finished, strict=True):
            if done.outcome is Outcome.STALE:
                log.info("worker.stale_attempt", task_id=str(task.id))
            retry_at = time.time() + (verdict.delay or 0) if done.status is Status.PENDING else None
            events.append(
                notify.Attempted(
                    task.id,
                    done.outcome,
                    result.elapsed_ms,
                    done.status,
                    retry_at,
                    done.callback_id,
                )
            )
        self.notifier.attempted(events)

    def _persist(self, write: Callable[[], T]) -> T | None:
        """``write()``, tried again through a database outage for a while; None if it never
        succeeded (the lease then expires and the task is retried)."""
        deadline = time.monotonic() + FINISH_RETRY_FOR
        while True:
            try:
                return write()
            except DatabaseError as exc:
                if time.monotonic() > deadline:
                    log.error("worker.write_failed", error=str(exc).splitlines()[0])
                    return None
                gevent.sleep(1)

    def _promote_loop(self) -> None:
        while True:
            try:
                self.notifier.promote_due()
            except notify.Unavailable as exc:
                log.warning("worker.promote_failed", error=str(exc))
                gevent.sleep(1)
            except Exception:  # the retries and delays it wakes must not stop with it
                log.exception("worker.promote_failed")
                gevent.sleep(1)
            gevent.sleep(PROMOTE_INTERVAL)

    def _cancel_loop(self) -> None:
        while True:
            try:
                for interrupt in self.notifier.interrupts():
                    self._interrupt(interrupt)
            except notify.Unavailable as exc:
                log.warning("worker.cancel_listener_failed", error=str(exc))
                gevent.sleep(1)
            except Exception:  # cancels must keep interrupting attempts after any one message
                log.exception("worker.cancel_listener_failed")
                gevent.sleep(1)

    def _interrupt(self, interrupt: notify.Interrupt) -> None:
        """Kill the attempts a cancel broadcast names."""
        if interrupt.whole_app:
            victims = [tid for tid, (_, app) in self.running.items() if app == interrupt.app_id]
        else:
            victims = [tid for tid in self.running if tid == interrupt.task_id]
        for task_id in victims:
            log.info("worker.interrupt", task_id=str(task_id))
            self.running[task_id][0].kill(Cancelled, block=False)
