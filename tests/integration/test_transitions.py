"""Task state transitions (ntq.store.transitions) against the real, migrated PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from ntq.config import Settings
from ntq.records import Acquired, AttemptResult, NewTask, Outcome, TaskView, Verdict
from ntq.store import enqueue, transitions
from ntq.store.apps import Credentials
from ntq.store.db import Store

pytestmark = pytest.mark.usefixtures("settings")  # empty tables and Redis for every test

HOOK = "https://example.com/hook"


def put(engine: Engine, creds: Credentials | None, **fields: Any) -> TaskView:
    with engine.begin() as conn:
        task, created = enqueue.insert_task(
            conn, NewTask(url=HOOK, **fields), creds.app_id if creds else None
        )
    assert created
    return task


def take(store: Store, *ids: uuid.UUID) -> list[Acquired]:
    return transitions.acquire(store, list(ids))


def row(engine: Engine, task_id: uuid.UUID) -> Any:
    with engine.begin() as conn:
        found = conn.execute(
            text(
                "SELECT status, retry_count, due, last_status_code, last_error, now() AS now "
                "FROM tasks WHERE id = :id"
            ),
            {"id": task_id},
        ).first()
    assert found is not None
    return found


def expire_lease(engine: Engine, task_id: uuid.UUID) -> None:
    """What time does to a lease whose worker died: the task is due again."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE tasks SET due = now() - interval '1 second' WHERE id = :id"),
            {"id": task_id},
        )


def result(code: int | None = 200, error: str | None = None) -> AttemptResult:
    return AttemptResult(
        method="POST", started=datetime.now(UTC), elapsed_ms=3, status_code=code, error=error
    )


def finish(
    store: Store, held: Acquired, verdict: Verdict, outcome: AttemptResult | None = None
) -> None:
    transitions.finish(store, held, outcome or result(), verdict)


def test_acquire_counts_the_attempt_and_leases_past_timeout_plus_grace(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds, timeout=30)
    (held,) = take(store, task.id)
    assert held.id == task.id
    assert held.retry_count == 1
    assert held.timeout == 30
    stored = row(engine, task.id)
    assert stored.status == "PENDING"
    assert stored.retry_count == 1
    lease = (stored.due - stored.now).total_seconds()
    assert 30 + transitions.LEASE_GRACE - 2 <= lease <= 30 + transitions.LEASE_GRACE + 5, lease


def test_a_second_acquire_of_the_same_task_gets_nothing(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    assert len(take(store, task.id)) == 1
    assert take(store, task.id) == []
    assert row(engine, task.id).retry_count == 1


def test_an_expired_lease_lets_the_next_attempt_start(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    take(store, task.id)
    expire_lease(engine, task.id)
    (again,) = take(store, task.id)
    assert again.retry_count == 2


def test_acquire_skips_delayed_finished_cancelled_and_unknown_tasks(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    delayed = put(engine, creds, delay=60)
    done = put(engine, creds)
    finish(store, take(store, done.id)[0], Verdict(Outcome.COMPLETE))
    cancelled = put(engine, creds)
    with engine.begin() as conn:
        assert transitions.cancel(conn, cancelled.id, creds.app_id) is not None
    due = put(engine, creds)
    got = take(store, delayed.id, done.id, cancelled.id, uuid.uuid4(), due.id)
    # (a cancelled task may be taken only for its DELETE notice, never as an attempt)
    assert [(t.id, t.retry_count) for t in got if t.id != cancelled.id] == [(due.id, 1)]
    assert row(engine, delayed.id).retry_count == 0
    assert (row(engine, done.id).status, row(engine, done.id).retry_count) == ("COMPLETED", 1)
    assert (row(engine, cancelled.id).status, row(engine, cancelled.id).retry_count) == (
        "CANCELLED",
        0,
    )


def test_concurrent_acquires_never_share_a_task(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """nTorque let two workers acquire the same attempt."""
    ids = [put(engine, creds).id for _ in range(100)]
    gate = threading.Barrier(4)
    taken: list[list[uuid.UUID]] = []

    def grab() -> None:
        gate.wait()
        taken.append([t.id for t in take(store, *ids)])

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    everything = [task_id for batch in taken for task_id in batch]
    assert sorted(everything) == sorted(ids)  # each exactly once, none lost


@pytest.mark.parametrize(
    ("verdict", "status"),
    [
        (Verdict(Outcome.COMPLETE), "COMPLETED"),
        (Verdict(Outcome.FAIL, error="HTTP 404 Not Found"), "FAILED"),
        (Verdict(Outcome.RETRY, error="HTTP 503", delay=30), "PENDING"),
    ],
)
def test_finish_applies_the_verdict(
    store: Store, engine: Engine, creds: Credentials, verdict: Verdict, status: str
) -> None:
    task = put(engine, creds)
    (held,) = take(store, task.id)
    finish(store, held, verdict, result(503 if status == "PENDING" else 200))
    stored = row(engine, task.id)
    assert stored.status == status
    assert stored.retry_count == 1
    assert stored.last_error == verdict.error
    if status == "PENDING":
        assert stored.last_status_code == 503
        wait = (stored.due - stored.now).total_seconds()
        assert 28 <= wait <= 32, wait
        assert take(store, task.id) == []  # not before its retry delay


def test_finish_of_a_stale_attempt_changes_nothing(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    (first,) = take(store, task.id)
    expire_lease(engine, task.id)
    (second,) = take(store, task.id)

    finish(store, first, Verdict(Outcome.FAIL, error="stale"), result(404))
    stored = row(engine, task.id)
    assert (stored.status, stored.retry_count, stored.last_error) == ("PENDING", 2, None)

    finish(store, second, Verdict(Outcome.COMPLETE))
    assert row(engine, task.id).status == "COMPLETED"

    finish(store, first, Verdict(Outcome.RETRY, error="late", delay=0), result(500))
    stored = row(engine, task.id)
    assert (stored.status, stored.last_error) == ("COMPLETED", None)


def test_a_stale_and_the_current_attempt_finishing_in_one_batch(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """Outcomes are matched by task and attempt number: the stale one is recorded as
    such, even beside its task's current attempt."""
    task = put(engine, creds)
    (first,) = take(store, task.id)
    expire_lease(engine, task.id)
    (second,) = take(store, task.id)
    done = transitions.finish_many(
        store,
        [
            (first, result(200), Verdict(Outcome.COMPLETE)),
            (second, result(500), Verdict(Outcome.FAIL, error="x")),
        ],
    )
    assert [(d.status, d.outcome) for d in done] == [(None, "stale"), ("FAILED", "fail")]
    with engine.begin() as conn:
        recorded = conn.execute(
            text("SELECT number, outcome FROM attempts WHERE task_id = :id ORDER BY number"),
            {"id": task.id},
        )
        assert [tuple(r) for r in recorded] == [(1, "stale"), (2, "fail")]
    assert row(engine, task.id).status == "FAILED"


def test_nul_characters_from_a_hook_do_not_stop_outcomes_being_recorded(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """PostgreSQL's text refuses NUL: a hostile hook's reason or headers must not make its
    outcome, or the rest of its batch, unrecordable."""
    hostile, other = put(engine, creds), put(engine, creds)
    (held,) = take(store, hostile.id)
    (fine,) = take(store, other.id)
    answer = AttemptResult(
        method="POST",
        started=datetime.now(UTC),
        elapsed_ms=1,
        status_code=200,
        reason="O\x00K",
        headers={"X-\x00": "a\x00b"},
    )
    transitions.finish_many(
        store,
        [(held, answer, Verdict(Outcome.COMPLETE)), (fine, result(200), Verdict(Outcome.COMPLETE))],
    )
    assert row(engine, hostile.id).status == "COMPLETED"
    assert row(engine, other.id).status == "COMPLETED"
    with engine.begin() as conn:
        stored = transitions.latest_response(conn, hostile.id)
    assert (stored.reason, stored.headers) == ("OK", {"X-": "ab"})


def test_cancel_then_finish_changes_nothing(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    (held,) = take(store, task.id)
    with engine.begin() as conn:
        assert transitions.cancel(conn, task.id, creds.app_id) is not None
    finish(store, held, Verdict(Outcome.COMPLETE))
    assert row(engine, task.id).status == "CANCELLED"
    finish(store, held, Verdict(Outcome.RETRY, error="HTTP 500", delay=0), result(500))
    take(store, task.id)  # at most its DELETE notice: never another attempt
    stored = row(engine, task.id)
    assert (stored.status, stored.retry_count) == ("CANCELLED", 1)


def test_terminal_tasks_cannot_be_cancelled(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    finish(store, take(store, task.id)[0], Verdict(Outcome.COMPLETE))
    with engine.begin() as conn:
        assert transitions.cancel(conn, task.id, creds.app_id) is None
        assert transitions.replay(conn, task.id, creds.app_id) is None  # only FAILED/CANCELLED
    assert row(engine, task.id).status == "COMPLETED"


def test_another_application_cannot_cancel_or_read_the_task(
    engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds)
    with engine.begin() as conn:
        assert transitions.get(conn, task.id, uuid.uuid4()) is None
        assert transitions.cancel(conn, task.id, uuid.uuid4()) is None
        assert transitions.get(conn, task.id, creds.app_id) is not None
    assert row(engine, task.id).status == "PENDING"


def test_replay_renews_a_failed_task(store: Store, engine: Engine, creds: Credentials) -> None:
    task = put(engine, creds, max_retries=0)
    finish(store, take(store, task.id)[0], Verdict(Outcome.FAIL, error="HTTP 500"), result(500))
    with engine.begin() as conn:
        replayed = transitions.replay(conn, task.id, creds.app_id)
    assert replayed is not None
    assert (replayed.status, replayed.retry_count) == ("PENDING", 0)
    (again,) = take(store, task.id)
    assert again.retry_count == 1


def test_overdue_returns_oldest_first_and_only_due_pending_tasks(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    now = datetime.now(UTC)
    newest = put(engine, creds, not_before=now - timedelta(seconds=10))
    oldest = put(engine, creds, not_before=now - timedelta(seconds=30))
    middle = put(engine, creds, not_before=now - timedelta(seconds=20))
    put(engine, creds, delay=60)  # not due
    done = put(engine, creds, not_before=now - timedelta(seconds=40))
    finish(store, take(store, done.id)[0], Verdict(Outcome.COMPLETE))
    with engine.begin() as conn:
        found = transitions.overdue(conn, 10)
    assert [task_id for _, task_id in found] == [oldest.id, middle.id, newest.id]


def test_overdue_cursor_continues_a_sweep_without_skipping_ties(
    engine: Engine, creds: Credentials
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    ids = [put(engine, creds, not_before=past).id for _ in range(5)]  # the same due
    ids += [put(engine, creds, not_before=past + timedelta(seconds=1)).id for _ in range(2)]
    swept: list[uuid.UUID] = []
    cursor = None
    with engine.begin() as conn:
        for _ in range(10):
            batch = transitions.overdue(conn, 2, after=cursor)
            if not batch:
                break
            swept += [task_id for _, task_id in batch]
            cursor = batch[-1]
    assert sorted(swept) == sorted(ids)
    assert len(swept) == len(set(swept))


def test_cleanup_removes_only_old_finished_tasks(
    engine: Engine, creds: Credentials, settings: Settings
) -> None:
    """nTorque's cleanup deleted PENDING tasks."""
    old: dict[str, uuid.UUID] = {}
    for status in ("PENDING", "COMPLETED", "FAILED", "CANCELLED"):
        old[status] = put(engine, creds).id
    recent_done = put(engine, creds).id
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE tasks SET status = :s WHERE id = :id"),
            [{"s": s, "id": i} for s, i in old.items()] + [{"s": "COMPLETED", "id": recent_done}],
        )
        conn.execute(
            text(
                "UPDATE tasks SET modified = now() - interval '8 days', "
                "created = now() - interval '9 days', "
                "due = now() - interval '8 days' WHERE id = ANY(:ids)"
            ),
            {"ids": list(old.values())},
        )
    with engine.begin() as conn:
        deleted = transitions.cleanup(conn, settings.cleanup_after_days)
    with engine.begin() as conn:
        left = set(conn.execute(text("SELECT id FROM tasks")).scalars())
    assert deleted == 3
    assert left == {old["PENDING"], recent_done}


def test_same_idempotency_key_returns_the_existing_task(engine: Engine, creds: Credentials) -> None:
    first = put(engine, creds, idempotency_key="order-42")
    with engine.begin() as conn:
        again, created = enqueue.insert_task(
            conn, NewTask(url=HOOK + "/other", idempotency_key="order-42"), creds.app_id
        )
    assert not created
    assert again.id == first.id
    assert again.url == HOOK
    with engine.begin() as conn:
        count = conn.execute(text("SELECT count(*) FROM tasks")).scalar()
    assert count == 1


def test_idempotency_keys_are_per_application(engine: Engine, creds: Credentials) -> None:
    mine = put(engine, creds, idempotency_key="k")
    theirs = put(engine, None, idempotency_key="k")
    assert mine.id != theirs.id
    assert put(engine, creds).id != put(engine, creds).id  # no key: always new


def test_concurrent_duplicates_of_an_idempotency_key_make_one_task(
    engine: Engine, creds: Credentials
) -> None:
    gate = threading.Barrier(6)
    outcomes: list[tuple[uuid.UUID, bool]] = []

    def submit() -> None:
        gate.wait()
        with engine.begin() as conn:
            task, created = enqueue.insert_task(
                conn, NewTask(url=HOOK, idempotency_key="race"), creds.app_id
            )
        outcomes.append((task.id, created))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == 6
    assert len({task_id for task_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1


def test_an_attempt_from_before_a_replay_cannot_finish_the_replayed_task(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """Cancel and replay reset the attempt counter; the attempt's identity is never reused."""
    task = put(engine, creds)
    (before,) = take(store, task.id)
    with engine.begin() as conn:
        assert transitions.cancel(conn, task.id, creds.app_id) is not None
        assert transitions.replay(conn, task.id, creds.app_id) is not None
    (replayed,) = take(store, task.id)
    assert replayed.retry_count == before.retry_count == 1
    assert replayed.attempt_id != before.attempt_id
    finish(store, replayed, Verdict(Outcome.RETRY, error="HTTP 503", delay=60), result(503))
    done = transitions.finish(store, before, result(200), Verdict(Outcome.COMPLETE))
    assert done.status is None
    stored = row(engine, task.id)
    assert (stored.status, stored.last_status_code) == ("PENDING", 503)


def owed(engine: Engine, task_id: uuid.UUID) -> tuple[bool, bool]:
    """(``notice_owed``, 0001's ``cancel_notice``) of the task."""
    with engine.begin() as conn:
        found = conn.execute(
            text("SELECT notice_owed, cancel_notice FROM tasks WHERE id = :id"), {"id": task_id}
        ).one()
    return found.notice_owed, found.cancel_notice


def test_the_previous_versions_writes_still_work_after_migration_0002(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """Expand only: the previous version's insert, cancel and notice statements (on 0001's
    ``cancel_notice``) run beside this version's, and a notice is owed in both columns
    alike, whichever version cancelled or sent it: sent once, by either."""
    old_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, app_id, status, url, method, headers, body, timeout, "
                "retry_count, max_retries, backoff, cancel_notice) VALUES (:id, :app, 'PENDING', "
                ":url, 'POST', '{}', '', 60, 0, 3, 'linear', false)"
            ),
            {"id": old_id, "app": creds.app_id, "url": HOOK},
        )
        conn.execute(
            text(
                "UPDATE tasks SET status = 'CANCELLED', cancel_notice = true, "
                "due = now() WHERE id = :id"
            ),
            {"id": old_id},
        )
        view = transitions.get(conn, old_id, creds.app_id)
    assert view is not None
    assert view.cancel_notice == "started"
    assert owed(engine, old_id) == (True, True)
    (notice,) = take(store, old_id)
    assert notice.is_cancel_notice
    assert notice.attempt_id is not None
    transitions.finish_notice(store, notice, result())
    assert owed(engine, old_id) == (False, False)

    new = put(engine, creds, cancel_notice="always")
    with engine.begin() as conn:
        assert transitions.cancel(conn, new.id, creds.app_id) is not None
    assert owed(engine, new.id) == (True, True)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE tasks SET cancel_notice = false WHERE id = :id AND cancel_notice"),
            {"id": new.id},
        )
    assert owed(engine, new.id) == (False, False)


def test_an_attempt_finishing_while_its_task_is_deleted_records_nothing_and_fails_nothing(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """The outcome waits for the concurrent ``DELETE /`` and then finds its task gone: the
    batch succeeds without it (it does not fail on the attempts' foreign key)."""
    task = put(engine, creds, cancel_notice="never")
    (held,) = take(store, task.id)
    errors: list[BaseException] = []

    def finish_meanwhile() -> None:
        try:
            finish(store, held, Verdict(Outcome.COMPLETE))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with engine.connect() as deleter:
        with deleter.begin():
            assert transitions.delete_all(deleter, creds.app_id) == []
            finisher = threading.Thread(target=finish_meanwhile)
            finisher.start()
            finisher.join(0.5)  # blocked on the deleting transaction's lock
            assert finisher.is_alive()
        finisher.join(10)
    assert errors == []
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM attempts")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 0


def writers(engine: Engine, task_id: uuid.UUID) -> set[str]:
    """The ids of the transactions that last wrote the task's row and its attempts'."""
    with engine.begin() as conn:
        return {
            str(x)
            for x in conn.execute(
                text(
                    "SELECT xmin FROM tasks WHERE id = :id "
                    "UNION SELECT xmin FROM attempts WHERE task_id = :id"
                ),
                {"id": task_id},
            ).scalars()
        }


def test_a_finish_that_creates_a_callback_is_one_transaction(
    store: Store, engine: Engine, creds: Credentials
) -> None:
    """The verdict, the attempt's record and the callback task commit together."""
    task = put(engine, creds, callback="https://cb.example/done")
    plain = put(engine, creds)
    (held,) = take(store, task.id)
    (other,) = take(store, plain.id)
    done, alone = transitions.finish_many(
        store,
        [
            (held, result(200), Verdict(Outcome.COMPLETE)),
            (other, result(200), Verdict(Outcome.COMPLETE)),
        ],
    )
    assert (done.status, done.outcome) == ("COMPLETED", "complete")
    assert done.callback_id is not None
    assert alone.callback_id is None
    with engine.begin() as conn:
        callback = transitions.get(conn, done.callback_id, creds.app_id)
    assert callback is not None
    assert (callback.url, callback.callback_of) == ("https://cb.example/done", task.id)
    written = (
        writers(engine, task.id) | writers(engine, plain.id) | writers(engine, done.callback_id)
    )
    assert len(written) == 1


def test_a_cancel_creates_the_callback_in_its_transaction(
    engine: Engine, creds: Credentials
) -> None:
    task = put(engine, creds, callback="https://cb.example/done", cancel_notice="always")
    with engine.begin() as conn:
        cancelled = transitions.cancel(conn, task.id, creds.app_id)
    assert cancelled is not None
    assert cancelled.notice_owed
    assert cancelled.task.status == "CANCELLED"
    assert cancelled.callback_id is not None
    assert writers(engine, task.id) == writers(engine, cancelled.callback_id)
    plain = put(engine, creds, cancel_notice="never")
    with engine.begin() as conn:
        quiet = transitions.cancel(conn, plain.id, creds.app_id)
        view = transitions.get(conn, plain.id, creds.app_id)
        assert view is not None
        assert quiet == transitions.Cancelled(view, False, None)
