"""Work that fails on a connection that no longer serves runs again on a fresh one
(:func:`ntq.store.db.retrying`), against the real PostgreSQL. Only the sessions of the test's own
engine are terminated or made read-only."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from ntq.store import db
from ntq.store.db import make_engine, retrying, transaction


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
            conn.execute(text("INSERT INTO apps (id, name, signing_secret) "
                              "VALUES (gen_random_uuid(), gen_random_uuid()::text, 's')"))
        return len(tries)
    return action


def _apps(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM apps")).scalar_one())


def test_a_transaction_on_a_terminated_connection_runs_again_on_a_fresh_one(
        own: Engine, engine: Engine) -> None:
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
        own: Engine, engine: Engine) -> None:
    pid = _read_only_session(own)
    tries: list[int] = []
    assert retrying(own, _insert_app(tries)) == 2
    assert _apps(engine) == 1
    assert _pooled_pid(own) != pid


def test_the_readiness_check_refuses_a_read_only_session_and_discards_it(
        own: Engine) -> None:
    pid = _read_only_session(own)
    with pytest.raises(DBAPIError) as refused, own.connect() as conn:
        db.check_writable(conn)
    assert db.is_read_only(refused.value)
    assert refused.value.connection_invalidated
    assert _pooled_pid(own) != pid
    retrying(own, db.check_writable)  # a fresh session is writable
