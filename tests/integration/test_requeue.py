"""The requeue poller (ntq.requeue) one round at a time, against the real PostgreSQL and
Redis: what it pushes to the queue list, how a sweep continues and restarts, the low-water
mark, overdue cancel notices, the advisory lock, and cleanup."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine, text

from ntq import metrics, notify, requeue
from ntq.config import Settings
from ntq.records import NewTask
from ntq.requeue import Requeue
from ntq.store import counters, enqueue, transitions
from ntq.store.apps import Credentials
from ntq.store.db import Store

HOOK = "https://example.com/hook"


@pytest.fixture
def queue(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url or "")
    yield client
    client.close()


def poller(settings: Settings, store: Store) -> Requeue:
    """A poller built as ``ntq requeue`` builds it."""
    return Requeue(settings, store, notify.connect(settings, metrics.Tally(store)))


def put(engine: Engine, creds: Credentials, count: int = 1, **fields: Any) -> list[uuid.UUID]:
    """``count`` new tasks, in one statement."""
    with engine.begin() as conn:
        created = enqueue.insert_tasks(conn, [NewTask(url=HOOK, **fields)] * count, creds.app_id)
    return [task.id for task, _ in created]


def set_due(engine: Engine, task_id: uuid.UUID, seconds_from_now: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE tasks SET due = now() + make_interval(secs => :s) WHERE id = :id"),
            {"s": seconds_from_now, "id": task_id},
        )


def pushed(queue: redis.Redis, settings: Settings) -> list[uuid.UUID]:
    """Every id on the queue list, in order."""
    # The client does not decode its replies, which redis-py's types cannot tell.
    raws = cast(list[bytes], queue.lrange(settings.queue_key, 0, -1))
    return [uuid.UUID(raw.decode()) for raw in raws]


def drain(queue: redis.Redis, settings: Settings) -> list[uuid.UUID]:
    """Take every id off the queue list, as workers would."""
    ids = pushed(queue, settings)
    queue.delete(settings.queue_key)
    return ids


def test_overdue_pending_tasks_are_pushed_oldest_first_and_nothing_else(
    settings: Settings, engine: Engine, store: Store, creds: Credentials, queue: redis.Redis
) -> None:
    late, later, latest = put(engine, creds, 3)
    for task_id, seconds in ((late, -30), (later, -20), (latest, -10)):
        set_due(engine, task_id, seconds)
    (scheduled,) = put(engine, creds, delay=3600)
    (done,) = put(engine, creds)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tasks SET status = 'COMPLETED', due = now() - interval "
                "'1 hour' WHERE id = :id"
            ),
            {"id": done},
        )

    busy = poller(settings, store).round()
    assert busy is False, "three tasks are no backlog"
    ids = pushed(queue, settings)
    assert ids[:3] == [late, later, latest], ids
    assert scheduled not in ids, "a task not yet due was pushed"
    assert done not in ids, "a finished task was pushed"
    assert len(ids) == 3, ids


def test_a_sweep_goes_on_in_batches_and_starts_over_once_it_reached_the_end(
    settings: Settings, engine: Engine, store: Store, creds: Credentials, queue: redis.Redis
) -> None:
    total = requeue.BATCH * 2 + 500
    everything = put(engine, creds, total)
    with engine.connect() as conn:  # one due time for all: the ids break the tie
        ordered = list(conn.execute(text("SELECT id FROM tasks ORDER BY due, id")).scalars())
    assert sorted(ordered) == sorted(everything)
    sweeper = poller(settings, store)

    assert sweeper.round() is True, "a full batch leaves a backlog"
    first = drain(queue, settings)
    assert first == ordered[: requeue.BATCH]
    assert sweeper.round() is True
    second = drain(queue, settings)
    assert second == ordered[requeue.BATCH : 2 * requeue.BATCH], "the sweep did not go on"
    assert sweeper.round() is False, "the last, short batch ends the sweep"
    assert drain(queue, settings) == ordered[2 * requeue.BATCH :]

    # Still PENDING (no worker took them): the next sweep starts from the oldest again.
    assert sweeper.round() is True
    assert drain(queue, settings) == ordered[: requeue.BATCH]


def test_nothing_more_is_pushed_while_the_queue_list_is_at_the_low_water_mark(
    settings: Settings, engine: Engine, store: Store, creds: Credentials, queue: redis.Redis
) -> None:
    oldest = put(engine, creds, 10)
    waiting = [str(uuid.uuid4()) for _ in range(requeue.LOW_WATER)]
    queue.rpush(settings.queue_key, *waiting)  # nobody consumes
    sweeper = poller(settings, store)

    assert sweeper.round() is True, "with the list full, the backlog is still to push"
    assert queue.llen(settings.queue_key) == requeue.LOW_WATER, "pushed past the mark"

    queue.ltrim(settings.queue_key, 4, -1)  # a worker took 4
    assert sweeper.round() is True, "room for only 4 of 10 leaves a backlog"
    assert queue.llen(settings.queue_key) == requeue.LOW_WATER, "pushed past the mark"
    assert pushed(queue, settings)[-4:] == oldest[:4]
    queue.delete(settings.queue_key)
    assert sweeper.round() is False
    assert pushed(queue, settings) == oldest[4:], "the sweep did not go on after the 4"


def test_overdue_cancel_notices_are_pushed_and_owed_ones_only(
    settings: Settings, engine: Engine, store: Store, creds: Credentials, queue: redis.Redis
) -> None:
    always, later = put(engine, creds, 2, cancel_notice="always", delay=3600)
    (never,) = put(engine, creds, cancel_notice="never", delay=3600)
    with engine.begin() as conn:
        for task_id in (always, never, later):
            assert transitions.cancel(conn, task_id, creds.app_id) is not None
    set_due(engine, later, 60)  # its notice waits for the attempt to be interrupted

    assert poller(settings, store).round() is False
    assert pushed(queue, settings) == [always]


def test_a_round_is_skipped_while_another_poller_holds_the_lock(
    settings: Settings, engine: Engine, store: Store, creds: Credentials, queue: redis.Redis
) -> None:
    (task_id,) = put(engine, creds)
    sweeper = poller(settings, store)
    with engine.connect() as other, other.begin():
        other.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": requeue.LOCK_KEY})
        assert sweeper.round() is False
        assert pushed(queue, settings) == [], "pushed without the lock"
    assert sweeper.round() is False
    assert pushed(queue, settings) == [task_id]


def test_cleanup_deletes_old_finished_tasks_and_folds_quiet_counters_once_a_minute(
    settings: Settings, engine: Engine, store: Store, creds: Credentials, queue: redis.Redis
) -> None:
    old_done, old_failed, old_owed, old_pending, recent_done = put(engine, creds, 5)
    with engine.begin() as conn:
        for task_id, status in (
            (old_done, "COMPLETED"),
            (recent_done, "COMPLETED"),
            (old_failed, "FAILED"),
        ):
            conn.execute(
                text("UPDATE tasks SET status = :status WHERE id = :id"),
                {"status": status, "id": task_id},
            )
        conn.execute(
            text(
                "UPDATE tasks SET status = 'CANCELLED', notice_owed = true, "
                "due = now() + interval '1 hour' WHERE id = :id"
            ),
            {"id": old_owed},
        )
        conn.execute(
            text("UPDATE tasks SET due = now() + interval '1 hour' WHERE id = :id"),
            {"id": old_pending},
        )
        conn.execute(
            text("UPDATE tasks SET modified = now() - interval '3 days' WHERE id <> :id"),
            {"id": recent_done},
        )
        conn.execute(
            text(
                "INSERT INTO counters (process, name, value, updated) VALUES "
                "('gone', 'ntq_test_total', 5, now() - interval '1 hour'), "
                "('alive', 'ntq_test_total', 2, now())"
            )
        )
    sweeper = poller(replace(settings, cleanup_after_days=2), store)

    assert sweeper.round() is False
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT id FROM tasks")).scalars())
        counts: dict[str, int] = dict(
            conn.execute(
                text("SELECT process, value FROM counters WHERE name = 'ntq_test_total'")
            ).all()
        )
    assert left == {old_owed, old_pending, recent_done}, "cleanup deleted the wrong tasks"
    assert counts == {counters.FOLDED: 5, "alive": 2}, counts

    (another,) = put(engine, creds)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tasks SET status = 'COMPLETED', "
                "modified = now() - interval '3 days' WHERE id = :id"
            ),
            {"id": another},
        )
    sweeper.round()
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM tasks WHERE id = :id"), {"id": another}
            ).scalar()
            == 1
        ), "cleanup ran again within a minute"
