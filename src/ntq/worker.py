"""The worker: a bounded gevent pool fed by Redis wake-ups.

One dispatcher greenlet waits for a free slot, BLPOPs task ids (taking more with LPOP while
slots are free), acquires the due ones in one statement and spawns an attempt for each. A
second greenlet promotes scheduled retries whose time has come; a third listens for
cancellations and interrupts the attempts they name. Stop is two-staged: the first signal
stops taking tasks and lets running attempts finish within the grace period; a second
signal interrupts them (their leases expire and they are retried later).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import redis
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
PING_EVERY = 3.0
PONG_WAIT = 3.0


class Cancelled(gevent.GreenletExit):  # type: ignore[misc]  # gevent is untyped
    """Raised inside an attempt whose task was cancelled."""


class Worker:
    """Takes due tasks and delivers them, up to ``concurrency`` at a time."""

    def __init__(self, settings: Settings, store: Store, concurrency: int,
                 grace: float = 30.0) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.store = store
        self.grace = grace
        self.pool = gevent.pool.Pool(concurrency)
        self.session = delivery.make_session(settings, concurrency)
        self.redis = notify.client(settings.redis_url, blocking=True)
        self.notifier = notify.Notifier(settings, notify.client(settings.redis_url),
                                        metrics.Tally(store))
        # task id -> (the greenlet attempting it, the task's application)
        self.running: dict[uuid.UUID, tuple[gevent.Greenlet, uuid.UUID | None]] = {}
        self.stopping = gevent.event.Event()
        self.stopped = gevent.event.Event()
        self.helpers: list[gevent.Greenlet] = []
        # Finished attempts wait here to be recorded in batches (one statement each).
        self.outcomes: gevent.queue.JoinableQueue = gevent.queue.JoinableQueue()

    def run(self) -> None:
        """Serve until :meth:`request_stop`, then drain and return."""
        log.info("worker.start", concurrency=self.pool.size)
        self.helpers = [gevent.spawn(self._promote_loop), gevent.spawn(self._cancel_loop),
                        gevent.spawn(self._finish_loop)]
        dispatcher = gevent.spawn(self._dispatch_loop)
        self.stopping.wait()
        dispatcher.kill()
        self._drain()
        self.outcomes.join(timeout=FINISH_RETRY_FOR)  # record what the attempts produced
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
                ids = self._take(self.pool.free_count())
                tasks = transitions.acquire(self.store, ids) if ids else []
            except (redis.RedisError, DatabaseError) as exc:
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

    def _take(self, free: int) -> list[uuid.UUID]:
        """Wait for an id, then take up to ``free`` in all: one round trip, since Redis
        runs the pipeline's LPOP only once its BLPOP has been served."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.blpop([self.settings.queue_key], timeout=notify.BLOCKING_WAIT)
        if free > 1:
            pipe.lpop(self.settings.queue_key, min(free - 1, MAX_BATCH))
        popped, *more = pipe.execute()
        if popped is None:
            return []
        return _parse_ids([popped[1], *(more[0] if more and more[0] else [])])

    def _attempt(self, task: Acquired) -> None:
        structlog.contextvars.bind_contextvars(task_id=str(task.id), attempt=task.retry_count)
        try:
            result = delivery.deliver(self.session, task, self.settings)
        except Cancelled:
            result = AttemptResult(method=task.method, started=datetime.now(UTC),
                                   elapsed_ms=0, error="interrupted: task cancelled")
            self._finish(task, result, Verdict("interrupted"))
            return
        except Exception as exc:
            # Escaping, it would leave the attempt unrecorded: the task would come back
            # with every expired lease, forever.
            log.exception("worker.attempt_crashed")
            result = AttemptResult(method=task.method, started=datetime.now(UTC), elapsed_ms=0,
                                   error=f"ntq could not make the request: {type(exc).__name__}")
        finally:
            self.running.pop(task.id, None)
        verdict = delivery.classify(task, result, self.settings)
        log.info("worker.attempt", outcome=verdict.outcome, status_code=result.status_code,
                 elapsed_ms=result.elapsed_ms, error=result.error)
        self._finish(task, result, verdict)

    def _notice(self, task: Acquired) -> None:
        """Send the DELETE owed to a cancelled task's hook, and record it."""
        structlog.contextvars.bind_contextvars(task_id=str(task.id))
        result = delivery.send_cancel_notice(self.session, task)
        log.info("worker.cancel_notice", status_code=result.status_code, error=result.error)
        if self._persist(lambda: transitions.finish_notice(self.store, task, result)):
            self.notifier.attempted([notify.Attempted(task.id, Outcome.CANCEL_NOTICE,
                                                      result.elapsed_ms)])

    def _finish(self, task: Acquired, result: AttemptResult, verdict: Verdict) -> None:
        self.outcomes.put((task, result, verdict))

    def _finish_loop(self) -> None:
        """Record finished attempts in batches: whatever has queued up while the previous
        batch was being written goes into the next one."""
        while True:
            batch = [self.outcomes.get()]
            while len(batch) < MAX_BATCH and not self.outcomes.empty():
                batch.append(self.outcomes.get_nowait())
            try:
                self._record(batch)
            except Exception:  # unrecorded, the leases expire and the tasks are retried
                log.exception("worker.record_failed", count=len(batch))
            finally:
                for _ in batch:
                    self.outcomes.task_done()

    def _record(self, batch: list[transitions.Judged]) -> None:
        finished = self._persist(lambda: transitions.finish_many(self.store, batch))
        if finished is None:
            return  # the leases expire and the tasks are attempted again
        events = []
        for (task, result, verdict), done in zip(batch, finished, strict=True):
            if done.outcome is Outcome.STALE:
                log.info("worker.stale_attempt", task_id=str(task.id))
            retry_at = time.time() + (verdict.delay or 0) if done.status is Status.PENDING else None
            events.append(notify.Attempted(task.id, done.outcome, result.elapsed_ms,
                                           done.status, retry_at, done.callback_id))
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
            except redis.RedisError as exc:
                log.warning("worker.promote_failed", error=str(exc))
                gevent.sleep(1)
            except Exception:  # the retries and delays it wakes must not stop with it
                log.exception("worker.promote_failed")
                gevent.sleep(1)
            gevent.sleep(PROMOTE_INTERVAL)

    def _cancel_loop(self) -> None:
        while True:
            try:
                self._listen_for_cancels()
            except redis.RedisError as exc:
                log.warning("worker.cancel_listener_failed", error=str(exc))
                gevent.sleep(1)
            except Exception:  # cancels must keep interrupting attempts after any one message
                log.exception("worker.cancel_listener_failed")
                gevent.sleep(1)

    def _listen_for_cancels(self) -> None:
        """Interrupt attempts named on the cancel channel. A silent connection (a Redis
        gone without a FIN) is noticed by pinging, then the caller reconnects."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(self.settings.cancel_channel)
        heard = pinged = time.monotonic()
        try:
            while True:
                message = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    if message.get("type") == "message":
                        self._interrupt(message.get("data"))
                if now - pinged >= PING_EVERY:
                    pubsub.ping()
                    pinged = now
                if now - heard > PING_EVERY + PONG_WAIT:
                    raise redis.ConnectionError("the cancel channel went silent")
        finally:
            pubsub.close()

    def _interrupt(self, data: Any) -> None:
        """Kill the attempt the message names: a task id, or ``app:<id>`` for all of an
        application's attempts (its tasks were deleted)."""
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        if text.startswith("app:"):
            victims = [tid for tid, (_, app) in self.running.items() if str(app) == text[4:]]
        else:
            victims = [tid for tid in _parse_ids([text]) if tid in self.running]
        for task_id in victims:
            log.info("worker.interrupt", task_id=str(task_id))
            self.running[task_id][0].kill(Cancelled, block=False)


def _parse_ids(raw: list[Any]) -> list[uuid.UUID]:
    ids = []
    for value in raw:
        try:
            ids.append(uuid.UUID(value.decode() if isinstance(value, bytes) else str(value)))
        except ValueError:
            log.warning("worker.bad_hint")
    return ids

