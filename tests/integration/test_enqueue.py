"""The enqueue hot path (store.enqueue, store.prepared) against the real, migrated PostgreSQL:
key check and insert in one autocommit statement, prepared once per connection, run again
on a fresh connection if its own was lost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ntq.records import NewTask
from ntq.store import apps, db, enqueue, transitions
from ntq.store.apps import Credentials
from ntq.store.db import Store

pytestmark = pytest.mark.usefixtures("settings")  # empty tables and Redis for every test

HOOK = "https://example.com/hook"


@pytest.fixture
def own(migrated: str) -> Iterator[Store]:
    """A store with one pooled connection: every call below uses the same one."""
    store = db.connect(migrated, pool_size=1)
    yield store
    store.dispose()


def pooled_sql(store: Store, sql: str) -> Any:
    """Run ``sql`` on the store's pooled connection; its result's first value, if any."""
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(sql)
        return result.scalar() if result.returns_rows else None


def stored(engine: Engine, app_id: Any) -> list[Any]:
    with engine.connect() as c:
        return list(
            c.execute(
                text(
                    "SELECT url, headers, body, content_type, status, due, callback FROM tasks "
                    "WHERE app_id IS NOT DISTINCT FROM :app ORDER BY url"
                ),
                {"app": app_id},
            )
        )


def test_one_task_is_stored_for_the_keys_application(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    new = NewTask(url=HOOK, headers={"X-A": "1"}, body=b"\x00\xff", content_type="x/y")
    done = enqueue.submit(own, [new], creds.api_key)
    assert done is not None
    assert (done.app_id, done.app_name) == (creds.app_id, creds.name)
    [(task, created)] = done.results
    assert created
    assert task.status == "PENDING"
    assert task.body_size == 2
    [row] = stored(engine, creds.app_id)
    assert (row.headers, bytes(row.body), row.content_type) == ({"X-A": "1"}, b"\x00\xff", "x/y")


def test_an_unknown_or_revoked_key_stores_nothing(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    assert enqueue.submit(own, [NewTask(url=HOOK)], apps.new_key()) is None
    with engine.begin() as c:
        [key_id] = apps.active_keys_matching(c, creds.api_key)
        apps.revoke_key_id(c, key_id)
    assert enqueue.submit(own, [NewTask(url=HOOK)], creds.api_key) is None
    assert enqueue.submit(own, [NewTask(url=HOOK)] * 2, creds.api_key) is None
    assert stored(engine, creds.app_id) == []


def test_an_idempotency_key_returns_the_first_task(own: Store, creds: Credentials) -> None:
    first = enqueue.submit(own, [NewTask(url=HOOK, idempotency_key="k")], creds.api_key)
    again = enqueue.submit(own, [NewTask(url=HOOK + "/2", idempotency_key="k")], creds.api_key)
    assert first is not None
    assert again is not None
    [(task, created)], [(same, created_again)] = first.results, again.results
    assert created
    assert not created_again
    assert same.id == task.id
    assert same.url == HOOK


def test_a_lost_prepared_statement_is_prepared_again(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    """A pooler or DISCARD ALL may drop the statement; the call runs it unprepared, and
    the next prepares it again. A statement the server already has is reused."""
    assert enqueue.submit(own, [NewTask(url=HOOK + "/1")], creds.api_key) is not None
    pooled_sql(own, "DEALLOCATE ALL")
    assert enqueue.submit(own, [NewTask(url=HOOK + "/2")], creds.api_key) is not None
    assert enqueue.submit(own, [NewTask(url=HOOK + "/3")], creds.api_key) is not None
    with own.engine.connect() as conn:
        conn.connection.info.clear()  # the server has it, the pool's record says not
    assert enqueue.submit(own, [NewTask(url=HOOK + "/4")], creds.api_key) is not None
    assert [row.url for row in stored(engine, creds.app_id)] == [f"{HOOK}/{n}" for n in range(1, 5)]


def test_a_batch_keeps_every_field_and_the_given_order(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    later = datetime(2040, 1, 1, tzinfo=UTC)
    batch = [
        NewTask(
            url=f"{HOOK}/{n}",
            headers={"N": str(n)},
            body=bytes([n, 0, 255]),
            content_type=None if n % 2 else "text/plain",
            delay=n * 60,
        )
        for n in range(5, 0, -1)
    ]
    batch.append(NewTask(url=f"{HOOK}/6", not_before=later, callback="https://cb.example/"))
    done = enqueue.submit(own, batch, creds.api_key)
    assert done is not None
    assert done.app_name == creds.name
    assert [task.url for task, _ in done.results] == [new.url for new in batch]
    assert all(created for _, created in done.results)
    rows = stored(engine, creds.app_id)
    assert [(r.headers, bytes(r.body), r.content_type) for r in rows[:5]] == [
        ({"N": str(n)}, bytes([n, 0, 255]), None if n % 2 else "text/plain") for n in range(1, 6)
    ]
    assert rows[5].due == later
    assert rows[5].callback == "https://cb.example/"
    delays = [(r.due - rows[0].due).total_seconds() for r in rows[:5]]
    assert delays == [0, 60, 120, 180, 240]


def test_a_batch_that_fails_stores_none_of_it(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    batch = [NewTask(url=HOOK), NewTask(url=HOOK, timeout=2**40)]  # out of integer range
    with pytest.raises(DBAPIError):
        enqueue.submit(own, batch, creds.api_key)
    with pytest.raises(DBAPIError):
        enqueue.submit(
            own,
            [
                NewTask(url=HOOK, idempotency_key="a"),
                NewTask(url=HOOK, timeout=2**40, idempotency_key="b"),
            ],
            creds.api_key,
        )
    assert stored(engine, creds.app_id) == []
    with own.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        assert dbapi.autocommit  # back in autocommit
    assert enqueue.submit(own, [NewTask(url=HOOK)], creds.api_key) is not None


def test_a_batch_with_idempotency_keys_reuses_their_tasks(own: Store, creds: Credentials) -> None:
    first = enqueue.submit(own, [NewTask(url=HOOK, idempotency_key="x")], creds.api_key)
    again = enqueue.submit(
        own,
        [NewTask(url=HOOK, idempotency_key="x"), NewTask(url=HOOK, idempotency_key="y")],
        creds.api_key,
    )
    assert first is not None
    assert again is not None
    [(task, _)] = first.results
    assert [(t.id == task.id, created) for t, created in again.results] == [
        (True, False),
        (False, True),
    ]


def test_without_authentication_tasks_have_no_application(own: Store, engine: Engine) -> None:
    one = enqueue.submit(own, [NewTask(url=HOOK + "/1")], None)
    many = enqueue.submit(own, [NewTask(url=HOOK + "/2"), NewTask(url=HOOK + "/3")], None)
    assert one is not None
    assert many is not None
    assert one.app_id is None
    assert many.app_id is None
    assert len(stored(engine, None)) == 3


def test_the_views_returned_are_the_stored_tasks(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    """The views are built from what was sent plus the database's times: they must equal
    what reading the tasks back gives."""
    rich = NewTask(
        url=HOOK,
        method="PUT",
        headers={"A": "b"},
        body=b"xyz",
        content_type="text/csv",
        timeout=9,
        delay=30,
        max_retries=2,
        backoff="linear",
        callback="https://cb.example/",
        idempotency_key="i",
    )
    one = enqueue.submit(own, [rich], creds.api_key)
    many = enqueue.submit(own, [NewTask(url=HOOK), NewTask(url=HOOK, delay=5)], creds.api_key)
    assert one is not None
    assert many is not None
    with engine.connect() as c:
        for task, _ in one.results + many.results:
            assert transitions.get(c, task.id, creds.app_id) == task


def test_a_lost_connection_is_replaced_and_the_task_stored_once(
    own: Store, engine: Engine, creds: Credentials
) -> None:
    """The store runs the statement again on a fresh connection: the caller sees one
    success, and one task was stored."""
    assert enqueue.submit(own, [NewTask(url=HOOK + "/1")], creds.api_key) is not None
    pid = pooled_sql(own, "SELECT pg_backend_pid()")
    with engine.connect() as c:
        assert c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    done = enqueue.submit(own, [NewTask(url=HOOK + "/2")], creds.api_key)
    assert done is not None
    assert [row.url for row in stored(engine, creds.app_id)] == [HOOK + "/1", HOOK + "/2"]
    assert pooled_sql(own, "SELECT pg_backend_pid()") != pid
