"""Work that fails on a connection that no longer serves runs again on a fresh one
(:func:`ntq.store.db.retrying`, inside the store's functions), against the real
PostgreSQL. Only the sessions of the test's own engine are terminated or made read-only."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from ntq.records import AttemptResult, NewTask, Outcome, Verdict
from ntq.store import db, enqueue, transitions
from ntq.store.db import Store, make_engine, retrying, transaction


@pytest.fixture
def own(migrated: str, clean: None) -> Iterator[Engine]:
    """An autocommit engine with one pooled connection, as the worker's."""
    engine = make_engine(migrated, pool_size=1, max_overflow=0, autocommit=True)
    yield engine
    engine.dispose()


def _pooled_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _insert_app(tries: list[int]) -> Callable[[Connection], int]:
    """An atomic write that counts its tries."""

    def action(conn: Connection) -> int:
        tries.append(1)
        with transaction(conn):
            conn.execute(
                text(
                    "INSERT INTO apps (id, name, signing_secret) "
                    "VALUES (gen_random_uuid(), gen_random_uuid()::text, 's')"
                )
            )
        return len(tries)

    return action


def _apps(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM apps")).scalar_one())


def test_a_transaction_on_a_terminated_connection_runs_again_on_a_fresh_one(
    own: Engine, engine: Engine
) -> None:
    assert retrying(own, _insert_app([])) == 1  # the pooled connection has written before
    pid = _pooled_pid(own)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

    tries: list[int] = []
    assert retrying(own, _insert_app(tries)) == 2
    assert _apps(engine) == 2
    assert _pooled_pid(own) != pid


def _read_only_session(engine: Engine) -> int:
    """Make the pooled session read-only, as on a demoted primary; its pid."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET SESSION default_transaction_read_only = on")
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_a_connection_that_finds_the_database_read_only_is_replaced(
    own: Engine, engine: Engine
) -> None:
    pid = _read_only_session(own)
    tries: list[int] = []
    assert retrying(own, _insert_app(tries)) == 2
    assert _apps(engine) == 1
    assert _pooled_pid(own) != pid


def test_the_readiness_check_refuses_a_read_only_session_and_discards_it(own: Engine) -> None:
    pid = _read_only_session(own)
    with pytest.raises(DBAPIError) as refused, own.connect() as conn:
        db.check_writable(conn)
    assert db.is_read_only(refused.value)
    assert refused.value.connection_invalidated
    assert _pooled_pid(own) != pid
    retrying(own, db.check_writable)  # a fresh session is writable


@pytest.fixture
def one(migrated: str, clean: None) -> Iterator[Store]:
    """A store with one pooled connection, as a worker's smallest."""
    store = db.connect(migrated, pool_size=1)
    yield store
    store.dispose()


def _due_task(engine: Engine, callback: str | None = None) -> uuid.UUID:
    with engine.begin() as conn:
        task, _ = enqueue.insert_task(
            conn, NewTask(url="https://example.com/hook", callback=callback), None
        )
    return task.id


def _terminate(store: Store, engine: Engine) -> int:
    pid = _pooled_pid(store.engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    return pid


def _ok() -> AttemptResult:
    return AttemptResult(method="POST", started=datetime.now(UTC), elapsed_ms=1, status_code=200)


def test_the_workers_store_functions_survive_a_terminated_connection(
    one: Store, engine: Engine
) -> None:
    """Acquire and finish (with the callback's transaction) run again on a fresh
    connection: their callers see one success."""
    task_id = _due_task(engine, callback="https://example.com/cb")
    transitions.acquire(one, [])  # the pooled connection has served before
    pid = _terminate(one, engine)
    (held,) = transitions.acquire(one, [task_id])
    _terminate(one, engine)
    done = transitions.finish(one, held, _ok(), Verdict(Outcome.COMPLETE))
    assert (done.status, done.callback_id is not None) == ("COMPLETED", True)
    assert _pooled_pid(one.engine) != pid
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 2


def test_a_prepared_statement_lost_inside_the_finish_transaction_is_prepared_again(
    one: Store, engine: Engine
) -> None:
    """With callbacks the finish is a transaction, which the failed EXECUTE aborts: the
    store runs it again, and the statement is prepared anew."""
    first, second = _due_task(engine), _due_task(engine, callback="https://example.com/cb")
    (held,) = transitions.acquire(one, [first])
    transitions.finish(one, held, _ok(), Verdict(Outcome.COMPLETE))  # prepared on the connection
    with one.engine.connect() as conn:
        conn.exec_driver_sql("DEALLOCATE ALL")
    (held,) = transitions.acquire(one, [second])
    done = transitions.finish(one, held, _ok(), Verdict(Outcome.COMPLETE))
    assert done.status == "COMPLETED"
    assert done.callback_id is not None


def test_a_locked_round_runs_once_at_a_time(one: Store, migrated: str) -> None:
    other = db.connect(migrated, pool_size=1)
    try:
        inner = db.locked(one, 42, lambda _: db.locked(other, 42, lambda _: "twice"))
        assert inner is None  # the second could not take the lock the first held
        assert db.locked(other, 42, lambda _: "alone") == "alone"  # released at commit
    finally:
        other.dispose()
