"""The notifier against the real Redis: each operation, and what it does when Redis
refuses connections (hints dropped, questions answered ``Unavailable``, never a crash)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import pytest
import redis

from ntq import metrics, notify
from ntq.config import Settings
from ntq.records import Outcome, Status
from ntq.store.db import Store


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Channels of this test's own: pub/sub is shared by every database of the server."""
    return replace(settings, redis_channel=f"ntq-test-{uuid.uuid4().hex}")


@pytest.fixture
def notifier(settings: Settings, store: Store) -> notify.Notifier:
    return notify.connect(settings, metrics.Tally(store))


@pytest.fixture
def server(settings: Settings) -> redis.Redis:
    assert settings.redis_url
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


@pytest.fixture
def refused(settings: Settings, store: Store) -> notify.Notifier:
    """A notifier whose Redis URL names a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")
    return notify.connect(down, metrics.Tally(store))


# The server decodes its replies (decode_responses), which redis-py's types cannot tell.


def queued(server: redis.Redis, settings: Settings) -> list[str]:
    return cast(list[str], server.lrange(settings.queue_key, 0, -1))


def scheduled(server: redis.Redis, settings: Settings) -> dict[str, float]:
    pairs = server.zrange(settings.scheduled_key, 0, -1, withscores=True)
    return dict(cast(list[tuple[str, float]], pairs))


@pytest.fixture
def heard(server: redis.Redis, settings: Settings) -> Iterator[redis.client.PubSub]:
    """A subscriber to every channel of the settings' prefix."""
    pubsub = server.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.psubscribe(f"{settings.redis_channel}:*")
    pubsub.get_message(timeout=1)
    yield pubsub
    pubsub.close()


def messages(pubsub: redis.client.PubSub) -> list[tuple[str, str]]:
    found = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        found.append((message["channel"], message["data"]))
    return found


def test_push_and_take(notifier: notify.Notifier, server: redis.Redis, settings: Settings) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    assert notifier.push(ids)
    assert notifier.push([])
    assert queued(server, settings) == [str(i) for i in ids]
    assert notifier.backlog() == 3
    assert notifier.take(2) == ids[:2]
    assert notifier.take(5) == ids[2:]
    assert notifier.take(5) == []  # after waiting BLOCKING_WAIT for nothing


def test_take_skips_an_id_that_is_not_a_uuid(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings
) -> None:
    good = uuid.uuid4()
    server.rpush(settings.queue_key, "junk", str(good))
    assert notifier.take(10) == [good]


def test_enqueued_wakes_now_and_schedules_later(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings
) -> None:
    now, later = uuid.uuid4(), uuid.uuid4()
    assert notifier.enqueued([now], {later: 1234.5})
    assert queued(server, settings) == [str(now)]
    assert scheduled(server, settings) == {str(later): 1234.5}


def test_schedule_then_promote_due(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings
) -> None:
    due, future = uuid.uuid4(), uuid.uuid4()
    assert notifier.schedule(due, time.time() - 1)
    assert notifier.schedule(future, time.time() + 3600)
    assert notifier.promote_due() == 1
    assert queued(server, settings) == [str(due)]
    assert list(scheduled(server, settings)) == [str(future)]


def test_attempted_schedules_retries_wakes_callbacks_announces_ends(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings, heard: redis.client.PubSub
) -> None:
    retried, done, callback = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    notifier.attempted(
        [
            notify.Attempted(retried, Outcome.RETRY, 5, Status.PENDING, retry_at=99.0),
            notify.Attempted(done, Outcome.COMPLETE, 5, Status.COMPLETED, callback_id=callback),
        ]
    )
    assert scheduled(server, settings) == {str(retried): 99.0}
    assert queued(server, settings) == [str(callback)]
    assert messages(heard) == [(settings.finished_channel(done), "COMPLETED")]


def test_cancelled_interrupts_schedules_the_notice_and_announces(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings, heard: redis.client.PubSub
) -> None:
    task, callback = uuid.uuid4(), uuid.uuid4()
    notifier.cancelled(task, callback, notice=True)
    assert messages(heard) == [
        (settings.cancel_channel, str(task)),
        (settings.finished_channel(task), "CANCELLED"),
    ]
    assert list(scheduled(server, settings)) == [str(task)]
    assert queued(server, settings) == [str(callback)]


def test_deleted_all_interrupts_the_application(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings, heard: redis.client.PubSub
) -> None:
    app, owed = uuid.uuid4(), uuid.uuid4()
    notifier.deleted_all(app, [owed])
    assert messages(heard) == [(settings.cancel_channel, f"app:{app}")]
    assert list(scheduled(server, settings)) == [str(owed)]


def test_interrupts_hears_tasks_and_applications(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings
) -> None:
    task, app = uuid.uuid4(), uuid.uuid4()
    received: list[notify.Interrupt] = []

    def listen() -> None:
        for interrupt in notifier.interrupts():
            received.append(interrupt)
            if len(received) == 3:
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 5
    while not server.pubsub_numsub(settings.cancel_channel)[0][1]:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.05)
    for text in (str(task), "not-an-id", f"app:{app}", "app:None"):
        server.publish(settings.cancel_channel, text)
    listener.join(timeout=5)
    assert received == [
        notify.Interrupt(task_id=task),
        notify.Interrupt(app_id=app, whole_app=True),
        notify.Interrupt(whole_app=True),
    ]


def test_wait_finished_returns_when_announced(
    notifier: notify.Notifier, server: redis.Redis, settings: Settings
) -> None:
    task = uuid.uuid4()
    statuses = iter([Status.PENDING, Status.COMPLETED])
    announce = threading.Timer(0.3, server.publish, [settings.finished_channel(task), "COMPLETED"])
    announce.start()
    started = time.monotonic()
    assert notifier.wait_finished(task, 10, lambda: next(statuses)) == Status.COMPLETED
    assert time.monotonic() - started < 5
    announce.join()


def test_wait_finished_gives_up_after_the_wait(notifier: notify.Notifier) -> None:
    started = time.monotonic()
    assert notifier.wait_finished(uuid.uuid4(), 0.3, lambda: Status.PENDING) == Status.PENDING
    assert 0.3 <= time.monotonic() - started < 3


def test_readiness_and_gauges(notifier: notify.Notifier) -> None:
    notifier.push([uuid.uuid4()])
    assert notifier.readiness() == {"redis": "ok"}
    assert notifier.gauges() == {"redis_queue_length": 1, "redis_up": 1}


def test_refused_hints_are_dropped_then_skipped(refused: notify.Notifier) -> None:
    task = uuid.uuid4()
    assert refused.push([task]) is False
    started = time.monotonic()
    assert refused.enqueued([task], {}) is False  # within the backoff: Redis not even tried
    assert refused.schedule(task, time.time()) is False
    refused.attempted([notify.Attempted(task, Outcome.COMPLETE, 1, Status.COMPLETED)])
    refused.cancelled(task)
    refused.deleted_all(None, [task])
    assert time.monotonic() - started < 0.5


def test_refused_questions_raise_unavailable(refused: notify.Notifier) -> None:
    for question in (
        lambda: refused.take(1),
        refused.backlog,
        refused.promote_due,
        lambda: next(refused.interrupts()),
    ):
        with pytest.raises(notify.Unavailable):
            question()


def test_refused_readiness_gauges_and_wait(refused: notify.Notifier) -> None:
    assert refused.readiness() == {"redis": "unreachable: ConnectionError"}
    assert refused.gauges() == {"redis_up": 0}
    assert refused.wait_finished(uuid.uuid4(), 5, lambda: Status.PENDING) == Status.PENDING


def test_unreachable_channel_fails_every_call_at_once() -> None:
    channel = notify.UNREACHABLE
    for call in (
        lambda: channel.send(notify.Hints(due=["x"])),
        lambda: channel.take(1),
        lambda: channel.promote_due(1),
        channel.backlog,
        channel.ping,
        lambda: channel.subscribe("x"),
    ):
        with pytest.raises(notify.Unavailable):
            call()
