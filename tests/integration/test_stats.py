"""``/stats`` delivery latency is measured from when a task became due, not from its
creation (issue 10 item 14): a delay the client asked for is not latency, time spent due
and waiting is. Time is moved by shifting a task's timestamps into the past."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, update

from ntq.records import AttemptResult, NewTask, Outcome, Verdict
from ntq.store import enqueue, reads, transitions
from ntq.store.apps import Credentials
from ntq.store.db import Store
from ntq.store.models import seconds, tasks

pytestmark = pytest.mark.usefixtures("settings")  # empty tables and Redis for every test

HOOK = "https://example.com/hook"
HOUR = 3600


def put(engine: Engine, creds: Credentials, **fields: Any) -> uuid.UUID:
    with engine.begin() as conn:
        task, _ = enqueue.insert_task(conn, NewTask(url=HOOK, **fields), creds.app_id)
    return task.id


def shift(engine: Engine, task_id: uuid.UUID, past: float, *columns: str) -> None:
    """Move the task's ``columns`` ``past`` seconds into the past."""
    moved = {name: tasks.c[name] - seconds(past) for name in columns}
    with engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(moved))


def attempt(store: Store, task_id: uuid.UUID, verdict: Verdict) -> None:
    """Acquire the task (it must be due) and apply ``verdict`` to that attempt."""
    (held,) = transitions.acquire(store, [task_id])
    transitions.finish(
        store,
        held,
        AttemptResult(method="POST", started=datetime.now(UTC), elapsed_ms=3, status_code=200),
        verdict,
    )


def latency(engine: Engine, creds: Credentials) -> dict[str, float]:
    with engine.begin() as conn:
        found: dict[str, float] = reads.stats(conn, creds.app_id)["delivery_latency_seconds"]
    return found


def test_a_delayed_tasks_wait_is_not_latency(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds, delay=HOUR)
    shift(engine, task, HOUR, "created", "due")  # enqueued an hour ago, due now
    attempt(store, task, Verdict(Outcome.COMPLETE))
    assert latency(engine, creds)["p99"] < 60


def test_a_not_before_in_the_past_counts_from_the_enqueue(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds, not_before=datetime.now(UTC) - timedelta(days=1))
    attempt(store, task, Verdict(Outcome.COMPLETE))
    assert 0 <= latency(engine, creds)["p99"] < 60


def test_time_spent_due_and_waiting_is_latency_across_retries(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    shift(engine, task, 120, "created", "due")  # due for two minutes, no worker took it
    attempt(store, task, Verdict(Outcome.RETRY, error="HTTP 503", delay=0))
    attempt(store, task, Verdict(Outcome.COMPLETE))
    assert 120 <= latency(engine, creds)["mean"] < 180


def test_a_replayed_task_counts_from_its_replay(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds, max_retries=0)
    attempt(store, task, Verdict(Outcome.FAIL, error="HTTP 500"))
    shift(engine, task, HOUR, "created", "first_due")  # failed an hour ago
    with engine.begin() as conn:
        assert transitions.replay(conn, task, creds.app_id) is not None
    attempt(store, task, Verdict(Outcome.COMPLETE))
    assert latency(engine, creds)["p99"] < 60
