"""Redis wake-ups, cancel broadcasts and finish announcements: hints, never the truth.

Every failure here is logged and swallowed: PostgreSQL holds every task, and the requeue
poller finds what a lost hint would have announced. Each public method is one round trip
(a pipeline), run only after the transaction it reports has committed. What is announced
is also counted, in the process's :class:`ntq.metrics.Tally` (written to PostgreSQL, not
Redis, so the counters survive whatever Redis goes through).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import gevent
import redis
import structlog
from gevent import monkey

from ntq import metrics
from ntq.config import Settings

log = structlog.get_logger(__name__)

# Moves ids whose time has come from the scheduled set to the queue, atomically, so any
# number of workers can run it at once without pushing an id twice.
_PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
return #ids
"""

# How long a cancelled attempt gets to be interrupted before the DELETE notice is sent.
NOTICE_DELAY = 0.5
# After a failure, skip Redis this long: an unreachable server must not slow every
# enqueue by a connect timeout (the requeue poller delivers what the hints miss).
BACKOFF_AFTER_FAILURE = 1.0

Id = uuid.UUID | str


# Longest server-side wait ntq asks of a blocking client (BLPOP's timeout).
BLOCKING_WAIT = 1


@dataclass(frozen=True)
class Attempted:
    """One recorded attempt, as the workers announce it."""

    task_id: Id
    outcome: str
    elapsed_ms: int
    status: str | None = None
    retry_at: float | None = None
    callback_id: Id | None = None


def client(url: str, *, blocking: bool = False) -> redis.Redis:
    """A Redis client. ``blocking`` ones (BLPOP, pub/sub) allow for the server-side wait
    in their read timeout, so a connection that died silently is still noticed."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=BLOCKING_WAIT + 5 if blocking else 2,
        socket_keepalive=True,
        health_check_interval=30,
    )


class Notifier:
    """Publishes wake-ups, schedules, cancellations and finish events."""

    def __init__(self, settings: Settings, conn: redis.Redis, tally: metrics.Tally) -> None:
        self.redis = conn
        self.settings = settings
        self.tally = tally
        self._promote = conn.register_script(_PROMOTE)
        self._skip_until = 0.0

    def _run(self, event: str, pipe: redis.client.Pipeline) -> bool:
        if time.monotonic() < self._skip_until:
            return False
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self._skip_until = time.monotonic() + BACKOFF_AFTER_FAILURE
            log.warning(f"notify.{event}_failed", error=str(exc))
            return False
        return True

    def push(self, ids: Iterable[Id]) -> bool:
        """Tell workers these tasks are due. False if Redis could not be reached."""
        values = [str(i) for i in ids]
        if not values:
            return True
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(self.settings.queue_key, *values)
        return self._run("push", pipe)

    def enqueued(self, due_now: list[Id], later: dict[Id, float]) -> bool:
        """Announce new tasks: wake workers for ``due_now``, schedule ``later`` (id ->
        epoch seconds), count them all."""
        pipe = self.redis.pipeline(transaction=False)
        if due_now:
            pipe.rpush(self.settings.queue_key, *[str(i) for i in due_now])
        if later:
            pipe.zadd(self.settings.scheduled_key, {str(k): v for k, v in later.items()})
        counts: Counter[str] = Counter()
        metrics.count_enqueued(counts, len(due_now) + len(later))
        self.tally.add(counts)
        return self._run("enqueued", pipe)

    def schedule(self, task_id: Id, when: float) -> bool:
        """Wake workers for the task at epoch time ``when`` (the poller is the backstop)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.settings.scheduled_key, {str(task_id): when})
        return self._run("schedule", pipe)

    def attempted(self, events: Iterable[Attempted]) -> None:
        """After attempts' outcomes committed: count them, schedule retries, wake
        callbacks' deliveries, announce terminal states to long-polling readers."""
        pipe = self.redis.pipeline(transaction=False)
        counts: Counter[str] = Counter()
        for event in events:
            metrics.count_attempt(counts, event.outcome, event.elapsed_ms)
            if event.retry_at is not None:
                pipe.zadd(self.settings.scheduled_key, {str(event.task_id): event.retry_at})
            if event.callback_id is not None:
                self._wake_callback(pipe, counts, event.callback_id)
            if event.status is not None and event.status != "PENDING":
                self._finished(pipe, counts, event.task_id, event.status)
        self.tally.add(counts)
        self._run("attempted", pipe)

    def _wake_callback(self, pipe: redis.client.Pipeline, counts: Counter[str],
                       callback_id: Id) -> None:
        pipe.rpush(self.settings.queue_key, str(callback_id))
        metrics.count_enqueued(counts, 1)

    def _finished(self, pipe: redis.client.Pipeline, counts: Counter[str], task_id: Id,
                  status: str) -> None:
        metrics.count_terminal(counts, status)
        pipe.publish(self.settings.finished_channel(task_id), status)

    def cancelled(self, task_id: Id, callback_id: Id | None = None,
                  notice: bool = True) -> None:
        """After a cancel committed: interrupt running attempts anywhere, schedule the
        hook's DELETE notice if it is owed, announce the terminal state."""
        pipe = self.redis.pipeline(transaction=False)
        counts: Counter[str] = Counter()
        pipe.publish(self.settings.cancel_channel, str(task_id))
        if notice:
            self._schedule_notices(pipe, [task_id])
        if callback_id is not None:
            self._wake_callback(pipe, counts, callback_id)
        self._finished(pipe, counts, task_id, "CANCELLED")
        self.tally.add(counts)
        self._run("cancelled", pipe)

    def deleted_all(self, app_id: uuid.UUID | None, notices: Iterable[Id]) -> None:
        """After an application's tasks were deleted: interrupt every running attempt of
        them, schedule the DELETE notices still owed to their hooks."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.publish(self.settings.cancel_channel, f"app:{app_id}")
        self._schedule_notices(pipe, notices)
        self._run("interrupt", pipe)

    def _schedule_notices(self, pipe: redis.client.Pipeline, task_ids: Iterable[Id]) -> None:
        """Wake a worker for each task's notice once its attempt had time to be interrupted."""
        when = time.time() + NOTICE_DELAY
        scheduled = {str(task_id): when for task_id in task_ids}
        if scheduled:
            pipe.zadd(self.settings.scheduled_key, scheduled)

    def promote_due(self, limit: int = 1000) -> int:
        """Move scheduled ids whose time has come onto the queue; return how many."""
        return int(self._promote(keys=[self.settings.scheduled_key, self.settings.queue_key],
                                 args=[time.time(), limit]))

    def backlog(self) -> int:
        """Length of the queue list (ids not yet taken by a worker)."""
        return int(self.redis.llen(self.settings.queue_key))


class EnqueueHints:
    """Coalesces the enqueue hints of concurrent requests into one pipeline.

    A request adds its ids and returns; one greenlet sends whatever has gathered by the
    time it runs, so a busy process makes one Redis round trip for many tasks, and an idle
    one sends at once. Outside a gevent-patched process nothing would run that greenlet,
    so each hint is sent directly.
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._now: list[Id] = []
        self._later: dict[Id, float] = {}
        self._sender: gevent.Greenlet | None = None
        self._cooperative = monkey.is_module_patched("socket")

    def add(self, due_now: list[Id], later: dict[Id, float]) -> None:
        if not (due_now or later):
            return
        if not self._cooperative:
            self.notifier.enqueued(due_now, later)
            return
        self._now.extend(due_now)
        self._later.update(later)
        if self._sender is None:
            self._sender = gevent.spawn(self._send)

    def _send(self) -> None:
        try:
            while self._now or self._later:
                now, later = self._now, self._later
                self._now, self._later = [], {}
                self.notifier.enqueued(now, later)
        finally:
            self._sender = None
