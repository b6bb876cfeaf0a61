"""The enqueue hot path (store.enqueue, store.prepared) against the real, migrated PostgreSQL:
key check and insert in one autocommit statement, prepared once per connection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from ntq.records import NewTask
from ntq.store import apps, enqueue, transitions
from ntq.store.apps import Credentials
from ntq.store.db import make_engine

pytestmark = pytest.mark.usefixtures("settings")  # empty tables and Redis for every test

HOOK = "https://example.com/hook"


@pytest.fixture
def conn(migrated: str) -> Iterator[Connection]:
    """An autocommit connection, as the web's enqueue views use."""
    autocommit = make_engine(migrated, pool_size=1, max_overflow=0, autocommit=True)
    with autocommit.connect() as connection:
        yield connection
    autocommit.dispose()


def stored(engine: Engine, app_id: Any) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(text(
            "SELECT url, headers, body, content_type, status, due, callback FROM tasks "
            "WHERE app_id IS NOT DISTINCT FROM :app ORDER BY url"), {"app": app_id}))


def test_one_task_is_stored_for_the_keys_application(conn: Connection, engine: Engine,
                                                      creds: Credentials) -> None:
    new = NewTask(url=HOOK, headers={"X-A": "1"}, body=b"\x00\xff", content_type="x/y")
    done = enqueue.submit(conn, new, creds.api_key)
    assert done is not None
    assert (done.app_id, done.app_name) == (creds.app_id, creds.name)
    [(task, created)] = done.results
    assert created
    assert task.status == "PENDING"
    assert task.body_size == 2
    [row] = stored(engine, creds.app_id)
    assert (row.headers, bytes(row.body), row.content_type) == ({"X-A": "1"}, b"\x00\xff",
                                                                "x/y")


def test_an_unknown_or_revoked_key_stores_nothing(conn: Connection, engine: Engine,
                                                  creds: Credentials) -> None:
    assert enqueue.submit(conn, NewTask(url=HOOK), apps.new_key()) is None
    with engine.begin() as c:
        [key_id] = apps.active_keys_matching(c, creds.api_key)
        apps.revoke_key_id(c, key_id)
    assert enqueue.submit(conn, NewTask(url=HOOK), creds.api_key) is None
    assert enqueue.submit_batch(conn, [NewTask(url=HOOK)], creds.api_key) is None
    assert stored(engine, creds.app_id) == []


def test_an_idempotency_key_returns_the_first_task(conn: Connection,
                                                   creds: Credentials) -> None:
    first = enqueue.submit(conn, NewTask(url=HOOK, idempotency_key="k"), creds.api_key)
    again = enqueue.submit(conn, NewTask(url=HOOK + "/2", idempotency_key="k"), creds.api_key)
    assert first is not None
    assert again is not None
    [(task, created)], [(same, created_again)] = first.results, again.results
    assert created
    assert not created_again
    assert same.id == task.id
    assert same.url == HOOK


def test_a_lost_prepared_statement_is_prepared_again(conn: Connection, engine: Engine,
                                                     creds: Credentials) -> None:
    """A pooler or DISCARD ALL may drop the statement; the call runs it unprepared, and
    the next prepares it again. A statement the server already has is reused."""
    assert enqueue.submit(conn, NewTask(url=HOOK + "/1"), creds.api_key) is not None
    conn.exec_driver_sql("DEALLOCATE ALL")
    assert enqueue.submit(conn, NewTask(url=HOOK + "/2"), creds.api_key) is not None
    assert enqueue.submit(conn, NewTask(url=HOOK + "/3"), creds.api_key) is not None
    conn.connection.info.clear()  # the server has it, the pool's record says not
    assert enqueue.submit(conn, NewTask(url=HOOK + "/4"), creds.api_key) is not None
    assert [row.url for row in stored(engine, creds.app_id)] == [
        f"{HOOK}/{n}" for n in range(1, 5)]


def test_a_batch_keeps_every_field_and_the_given_order(conn: Connection, engine: Engine,
                                                       creds: Credentials) -> None:
    later = datetime(2040, 1, 1, tzinfo=UTC)
    batch = [NewTask(url=f"{HOOK}/{n}", headers={"N": str(n)}, body=bytes([n, 0, 255]),
                     content_type=None if n % 2 else "text/plain", delay=n * 60)
             for n in range(5, 0, -1)]
    batch.append(NewTask(url=f"{HOOK}/6", not_before=later, callback="https://cb.example/"))
    done = enqueue.submit_batch(conn, batch, creds.api_key)
    assert done is not None
    assert done.app_name == creds.name
    assert [task.url for task, _ in done.results] == [new.url for new in batch]
    assert all(created for _, created in done.results)
    rows = stored(engine, creds.app_id)
    assert [(r.headers, bytes(r.body), r.content_type) for r in rows[:5]] == [
        ({"N": str(n)}, bytes([n, 0, 255]), None if n % 2 else "text/plain")
        for n in range(1, 6)]
    assert rows[5].due == later
    assert rows[5].callback == "https://cb.example/"
    delays = [(r.due - rows[0].due).total_seconds() for r in rows[:5]]
    assert delays == [0, 60, 120, 180, 240]


def test_a_batch_that_fails_stores_none_of_it(conn: Connection, engine: Engine,
                                              creds: Credentials) -> None:
    batch = [NewTask(url=HOOK), NewTask(url=HOOK, timeout=2**40)]  # out of integer range
    with pytest.raises(DBAPIError):
        enqueue.submit_batch(conn, batch, creds.api_key)
    with pytest.raises(DBAPIError):
        enqueue.submit_batch(conn, [NewTask(url=HOOK, idempotency_key="a"),
                                   NewTask(url=HOOK, timeout=2**40, idempotency_key="b")],
                            creds.api_key)
    assert stored(engine, creds.app_id) == []
    assert conn.connection.dbapi_connection.autocommit  # back in autocommit
    assert enqueue.submit(conn, NewTask(url=HOOK), creds.api_key) is not None


def test_a_batch_with_idempotency_keys_reuses_their_tasks(conn: Connection,
                                                          creds: Credentials) -> None:
    first = enqueue.submit_batch(conn, [NewTask(url=HOOK, idempotency_key="x")],
                                creds.api_key)
    again = enqueue.submit_batch(conn, [NewTask(url=HOOK, idempotency_key="x"),
                                       NewTask(url=HOOK, idempotency_key="y")], creds.api_key)
    assert first is not None
    assert again is not None
    [(task, _)] = first.results
    assert [(t.id == task.id, created) for t, created in again.results] == [
        (True, False), (False, True)]


def test_without_authentication_tasks_have_no_application(conn: Connection,
                                                          engine: Engine) -> None:
    one = enqueue.submit(conn, NewTask(url=HOOK + "/1"), None)
    many = enqueue.submit_batch(conn, [NewTask(url=HOOK + "/2")], None)
    assert one is not None
    assert many is not None
    assert one.app_id is None
    assert many.app_id is None
    assert len(stored(engine, None)) == 2


def test_the_views_returned_are_the_stored_tasks(conn: Connection, engine: Engine,
                                                 creds: Credentials) -> None:
    """The views are built from what was sent plus the database's times: they must equal
    what reading the tasks back gives."""
    rich = NewTask(url=HOOK, method="PUT", headers={"A": "b"}, body=b"xyz",
                   content_type="text/csv", timeout=9, delay=30, max_retries=2,
                   backoff="linear", callback="https://cb.example/", idempotency_key="i")
    one = enqueue.submit(conn, rich, creds.api_key)
    many = enqueue.submit_batch(conn, [NewTask(url=HOOK), NewTask(url=HOOK, delay=5)],
                               creds.api_key)
    assert one is not None
    assert many is not None
    with engine.connect() as c:
        for task, _ in one.results + many.results:
            assert transitions.get(c, task.id, creds.app_id) == task


def test_a_lost_prepared_statement_inside_a_transaction_fails_once(
        engine: Engine, creds: Credentials) -> None:
    """The failed EXECUTE aborts the transaction: the call raises, and a retry (as the
    worker's writes do) prepares the statement again."""
    with engine.begin() as c:
        task, _ = transitions.enqueue(c, NewTask(url=HOOK), creds.app_id)
    with engine.connect() as c:
        with c.begin():
            transitions.acquire(c, [uuid.uuid4()])  # prepares it on this connection
            c.exec_driver_sql("DEALLOCATE ALL")
        with pytest.raises(DBAPIError), c.begin():
            transitions.acquire(c, [task.id])
        with c.begin():
            [held] = transitions.acquire(c, [task.id])
    assert held.id == task.id
