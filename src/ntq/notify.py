"""Redis wake-ups, cancel broadcasts and finish announcements: hints, never the truth.

The only module that talks to Redis. Every other module holds a :class:`Notifier`, which
sends hints through a :class:`Channel`: :class:`RedisChannel`, or :data:`UNREACHABLE` for a
second after Redis failed. A hint that cannot be sent is logged and dropped: PostgreSQL
holds every task, and the requeue poller finds what a lost hint would have announced.
Questions (take ids, queue length, ping, listen) raise :class:`Unavailable` instead.
Each hint is one round trip (a pipeline), sent only after the transaction it reports has
committed. What is announced is also counted, in the process's :class:`ntq.metrics.Tally`
(written to PostgreSQL, not Redis, so the counters survive whatever Redis goes through).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import redis
import structlog
from gevent import monkey

from ntq import metrics
from ntq.config import Settings
from ntq.records import Outcome, Status

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
# Longest server-side wait ntq asks of a blocking client (BLPOP's timeout).
BLOCKING_WAIT = 1
# Most ids taken in one round trip.
MAX_TAKE = 100
# A cancel listener pings this often, and gives up on a connection silent this long.
PING_EVERY = 3.0
PONG_WAIT = 3.0


class Unavailable(Exception):
    """Redis could not be reached."""


@dataclass(frozen=True)
class Attempted:
    """One recorded attempt, as the workers announce it."""

    task_id: uuid.UUID
    outcome: Outcome
    elapsed_ms: int
    status: Status | None = None
    retry_at: float | None = None
    callback_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Interrupt:
    """A cancel broadcast: stop the attempt of ``task_id``, or, when ``whole_app``, every
    attempt of application ``app_id`` (its tasks were deleted)."""

    task_id: uuid.UUID | None = None
    app_id: uuid.UUID | None = None
    whole_app: bool = False


@dataclass
class Hints:
    """What one round trip tells Redis: ids due now, ids due later (id -> epoch seconds),
    and (channel, message) pairs to publish."""

    due: list[str] = field(default_factory=list)
    later: dict[str, float] = field(default_factory=dict)
    published: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.due or self.later or self.published)


class Channel(Protocol):
    """Where hints go and wake-ups come from. Every method raises :class:`Unavailable`
    when the server cannot be reached."""

    def send(self, hints: Hints) -> None: ...

    def take(self, most: int) -> list[str]: ...

    def promote_due(self, limit: int) -> int: ...

    def backlog(self) -> int: ...

    def ping(self) -> None: ...

    def subscribe(
        self, channel: str, blocking: bool = False
    ) -> AbstractContextManager[Subscription]: ...


@dataclass(frozen=True)
class Message:
    """What a subscription heard: ``kind`` "message" with its ``data``, or "pong"."""

    kind: str
    data: str = ""


class Subscription(Protocol):
    """One channel listened to."""

    def get(self, timeout: float) -> Message | None:
        """The next message within ``timeout`` seconds, or None."""

    def ping(self) -> None:
        """Ask the server for a pong (a :class:`Message` too), to notice a dead link."""


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


@contextmanager
def _translated() -> Iterator[None]:
    """Redis's errors, raised as :class:`Unavailable` (the cause keeps the detail)."""
    try:
        yield
    except redis.RedisError as exc:
        raise Unavailable(str(exc)) from exc


class RedisChannel:
    """The real channel: a list of due ids, a sorted set of scheduled ones, pub/sub."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self._client = client(url)
        self._blocking = client(url, blocking=True)
        self._promote = self._client.register_script(_PROMOTE)

    def send(self, hints: Hints) -> None:
        pipe = self._client.pipeline(transaction=False)
        if hints.due:
            pipe.rpush(self.settings.queue_key, *hints.due)
        if hints.later:
            pipe.zadd(self.settings.scheduled_key, hints.later)
        for channel, message in hints.published:
            pipe.publish(channel, message)
        with _translated():
            pipe.execute()

    def take(self, most: int) -> list[str]:
        """Wait for an id, then take up to ``most`` in all: one round trip, since Redis
        runs the pipeline's LPOP only once its BLPOP has been served."""
        pipe = self._blocking.pipeline(transaction=False)
        pipe.blpop([self.settings.queue_key], timeout=BLOCKING_WAIT)
        if most > 1:
            pipe.lpop(self.settings.queue_key, min(most - 1, MAX_TAKE))
        with _translated():
            popped, *more = pipe.execute()
        if popped is None:
            return []
        return [_text(value) for value in [popped[1], *(more[0] if more and more[0] else [])]]

    def promote_due(self, limit: int) -> int:
        with _translated():
            return int(
                self._promote(
                    keys=[self.settings.scheduled_key, self.settings.queue_key],
                    args=[time.time(), limit],
                )
            )

    def backlog(self) -> int:
        with _translated():
            return int(self._client.llen(self.settings.queue_key))

    def ping(self) -> None:
        with _translated():
            self._client.ping()

    @contextmanager
    def subscribe(self, channel: str, blocking: bool = False) -> Iterator[Subscription]:
        conn = self._blocking if blocking else self._client
        pubsub = conn.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            with _translated():
                pubsub.subscribe(channel)
                yield _RedisSubscription(pubsub)
        finally:
            pubsub.close()


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def get(self, timeout: float) -> Message | None:
        with _translated():
            message = self._pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        return Message(str(message.get("type")), _text(message.get("data")))

    def ping(self) -> None:
        with _translated():
            self._pubsub.ping()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class UnreachableChannel:
    """The channel while Redis cannot be reached: every call fails at once, without
    waiting for a connect timeout."""

    def send(self, hints: Hints) -> None:
        raise Unavailable("Redis is unreachable")

    def take(self, most: int) -> list[str]:
        raise Unavailable("Redis is unreachable")

    def promote_due(self, limit: int) -> int:
        raise Unavailable("Redis is unreachable")

    def backlog(self) -> int:
        raise Unavailable("Redis is unreachable")

    def ping(self) -> None:
        raise Unavailable("Redis is unreachable")

    def subscribe(
        self, channel: str, blocking: bool = False
    ) -> AbstractContextManager[Subscription]:
        raise Unavailable("Redis is unreachable")


UNREACHABLE = UnreachableChannel()


class Notifier:
    """Publishes wake-ups, schedules, cancellations and finish events; hands workers the
    ids to take and the cancels to obey."""

    def __init__(self, settings: Settings, channel: Channel, tally: metrics.Tally) -> None:
        self.settings = settings
        self.channel = channel
        self.tally = tally
        self._skip_until = 0.0

    def _send(self, event: str, hints: Hints) -> bool:
        """Send ``hints`` (through :data:`UNREACHABLE` for a while after a failure);
        False if they were dropped."""
        channel = self.channel if time.monotonic() >= self._skip_until else UNREACHABLE
        try:
            if hints:
                channel.send(hints)
        except Unavailable as exc:
            if channel is not UNREACHABLE:
                self._skip_until = time.monotonic() + BACKOFF_AFTER_FAILURE
                log.warning(f"notify.{event}_failed", error=str(exc))
            return False
        return True

    def push(self, ids: Iterable[uuid.UUID]) -> bool:
        """Tell workers these tasks are due. False if Redis could not be reached."""
        values = [str(i) for i in ids]
        if not values:
            return True
        return self._send("push", Hints(due=values))

    def enqueued(self, due_now: list[uuid.UUID], later: dict[uuid.UUID, float]) -> bool:
        """Announce new tasks: wake workers for ``due_now``, schedule ``later`` (id ->
        epoch seconds), count them all."""
        counts: Counter[str] = Counter()
        metrics.count_enqueued(counts, len(due_now) + len(later))
        self.tally.add(counts)
        return self._send(
            "enqueued",
            Hints(due=[str(i) for i in due_now], later={str(k): v for k, v in later.items()}),
        )

    def schedule(self, task_id: uuid.UUID, when: float) -> bool:
        """Wake workers for the task at epoch time ``when`` (the poller is the backstop)."""
        return self._send("schedule", Hints(later={str(task_id): when}))

    def attempted(self, events: Iterable[Attempted]) -> None:
        """After attempts' outcomes committed: count them, schedule retries, wake
        callbacks' deliveries, announce terminal states to long-polling readers."""
        hints = Hints()
        counts: Counter[str] = Counter()
        for event in events:
            metrics.count_attempt(counts, event.outcome, event.elapsed_ms)
            if event.retry_at is not None:
                hints.later[str(event.task_id)] = event.retry_at
            if event.callback_id is not None:
                self._wake_callback(hints, counts, event.callback_id)
            if event.status is not None and event.status != Status.PENDING:
                self._finished(hints, counts, event.task_id, event.status)
        self.tally.add(counts)
        self._send("attempted", hints)

    def _wake_callback(self, hints: Hints, counts: Counter[str], callback_id: uuid.UUID) -> None:
        hints.due.append(str(callback_id))
        metrics.count_enqueued(counts, 1)

    def _finished(
        self, hints: Hints, counts: Counter[str], task_id: uuid.UUID, status: Status
    ) -> None:
        metrics.count_terminal(counts, status)
        hints.published.append((self.settings.finished_channel(task_id), status))

    def cancelled(
        self, task_id: uuid.UUID, callback_id: uuid.UUID | None = None, notice: bool = True
    ) -> None:
        """After a cancel committed: interrupt running attempts anywhere, schedule the
        hook's DELETE notice if it is owed, announce the terminal state."""
        hints = Hints(published=[(self.settings.cancel_channel, str(task_id))])
        counts: Counter[str] = Counter()
        if notice:
            self._schedule_notices(hints, [task_id])
        if callback_id is not None:
            self._wake_callback(hints, counts, callback_id)
        self._finished(hints, counts, task_id, Status.CANCELLED)
        self.tally.add(counts)
        self._send("cancelled", hints)

    def deleted_all(self, app_id: uuid.UUID | None, notices: Iterable[uuid.UUID]) -> None:
        """After an application's tasks were deleted: interrupt every running attempt of
        them, schedule the DELETE notices still owed to their hooks."""
        hints = Hints(published=[(self.settings.cancel_channel, f"app:{app_id}")])
        self._schedule_notices(hints, notices)
        self._send("interrupt", hints)

    def _schedule_notices(self, hints: Hints, task_ids: Iterable[uuid.UUID]) -> None:
        """Wake a worker for each task's notice once its attempt had time to be interrupted."""
        when = time.time() + NOTICE_DELAY
        hints.later.update({str(task_id): when for task_id in task_ids})

    def promote_due(self, limit: int = 1000) -> int:
        """Move scheduled ids whose time has come onto the queue; return how many."""
        return self.channel.promote_due(limit)

    def backlog(self) -> int:
        """Length of the queue list (ids not yet taken by a worker)."""
        return self.channel.backlog()

    def readiness(self) -> dict[str, str]:
        """``/readyz``'s check: Redis ``ok`` if it answers a ping now, else
        ``unreachable: <error class>``."""
        try:
            self.channel.ping()
        except Unavailable as exc:
            return {"redis": f"unreachable: {type(exc.__cause__ or exc).__name__}"}
        return {"redis": "ok"}

    def gauges(self) -> dict[str, float]:
        """``/metrics``'s gauges: the queue's length and 1 when Redis answers, else 0."""
        try:
            return {"redis_queue_length": self.backlog(), "redis_up": 1}
        except Unavailable:
            return {"redis_up": 0}

    def take(self, most: int) -> list[uuid.UUID]:
        """Wait up to :data:`BLOCKING_WAIT` seconds for due ids; take up to ``most``."""
        return _parse_ids(self.channel.take(most))

    def interrupts(self) -> Iterator[Interrupt]:
        """The cancel broadcasts, as they come. A silent connection (a Redis gone without
        a FIN) is noticed by pinging: it raises :class:`Unavailable`, as any failure does."""
        with self.channel.subscribe(self.settings.cancel_channel, blocking=True) as heard:
            last = pinged = time.monotonic()
            while True:
                message = heard.get(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    last = now
                    if message.kind == "message":
                        yield from _interrupt(message.data)
                if now - pinged >= PING_EVERY:
                    heard.ping()
                    pinged = now
                if now - last > PING_EVERY + PONG_WAIT:
                    raise Unavailable("the cancel channel went silent")

    def wait_finished(
        self, task_id: uuid.UUID, wait: float, status: Callable[[], Status]
    ) -> Status:
        """Wait up to ``wait`` seconds for the task's terminal announcement; return
        ``status()`` then (or at once, if the task is no longer PENDING). Without Redis,
        simply ``status()``."""
        try:
            with self.channel.subscribe(self.settings.finished_channel(task_id)) as heard:
                now = status()  # it may have finished before we subscribed
                deadline = time.monotonic() + wait
                while now == Status.PENDING and (left := deadline - time.monotonic()) > 0:
                    if heard.get(timeout=left) is not None:
                        now = status()
                return now
        except Unavailable:
            return status()


def connect(settings: Settings, tally: metrics.Tally) -> Notifier:
    """The notifier of ``settings.redis_url`` (connected on first use, again after loss)."""
    assert settings.redis_url
    return Notifier(settings, RedisChannel(settings, settings.redis_url), tally)


def _parse_ids(raw: list[str]) -> list[uuid.UUID]:
    ids = []
    for value in raw:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            log.warning("worker.bad_hint")
    return ids


def _interrupt(text: str) -> list[Interrupt]:
    """The broadcast ``text`` means: a task id, or ``app:<id>`` for a whole application."""
    if not text.startswith("app:"):
        return [Interrupt(task_id=task_id) for task_id in _parse_ids([text])]
    app = text[4:]
    if app == "None":
        return [Interrupt(whole_app=True)]
    try:
        return [Interrupt(app_id=uuid.UUID(app), whole_app=True)]
    except ValueError:
        return []


class EnqueueHints:
    """Coalesces the enqueue hints of concurrent requests into one pipeline.

    A request adds its ids and returns; one greenlet sends whatever has gathered by the
    time it runs, so a busy process makes one Redis round trip for many tasks, and an idle
    one sends at once. Outside a gevent-patched process nothing would run that greenlet,
    so each hint is sent directly.
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._now: list[uuid.UUID] = []
        self._later: dict[uuid.UUID, float] = {}
        self._sender: gevent.Greenlet | None = None
        self._cooperative = monkey.is_module_patched("socket")

    def add(self, due_now: list[uuid.UUID], later: dict[uuid.UUID, float]) -> None:
        """Announce new tasks (see :meth:`Notifier.enqueued`), coalesced."""
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
