"""Every INSERT of a task: the enqueue hot path, batches, idempotent inserts, and the
callback tasks that finished or cancelled tasks create (:func:`insert_task`, in the
transaction of the state change).

``POST /`` is the busiest route, so it costs one round trip to PostgreSQL: the key's
lookup (:data:`ntq.store.apps.OWNER`) is a CTE of the INSERT, run in autocommit. The task
is durable when the statement returns, and a revoked key is refused at once (keys are
never cached).

A batch is one statement too: the tasks travel as one JSON document, unpacked by
``json_to_recordset``, so it is all or nothing without a transaction block. Both
statements are prepared once per connection (:mod:`ntq.store.prepared`), which halves
PostgreSQL's work per request.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Float,
    Select,
    Text,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    null,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ntq import serialize
from ntq.records import NewTask, Status, TaskView
from ntq.store import apps
from ntq.store.db import Db, Store, retrying, transaction
from ntq.store.models import VIEW_COLUMNS, seconds, tasks
from ntq.store.prepared import Prepared
from ntq.store.uuid7 import uuid7

INSERT_COLUMNS = (
    "id",
    "app_id",
    "status",
    "url",
    "method",
    "headers",
    "body",
    "content_type",
    "timeout",
    "retry_count",
    "max_retries",
    "backoff",
    "callback",
    "idempotency_key",
    "callback_of",
    "notice_policy",
)


def insert_params(new: NewTask, app_id: uuid.UUID | None) -> dict[str, Any]:
    """The bound values of one new task's row (its id is minted here)."""
    return {
        "id": uuid7(),
        "app_id": app_id,
        "status": Status.PENDING,
        "url": new.url,
        "method": new.method,
        "headers": new.headers,
        "body": new.body,
        "content_type": new.content_type,
        "timeout": new.timeout,
        "not_before": new.not_before,
        "delay": float(new.delay),
        "retry_count": 0,
        "max_retries": new.max_retries,
        "backoff": new.backoff,
        "callback": new.callback,
        "idempotency_key": new.idempotency_key,
        "callback_of": new.callback_of,
        "notice_policy": new.cancel_notice,
    }


def new_view(
    new: NewTask, sent: dict[str, Any], app_id: uuid.UUID | None, due: datetime, created: datetime
) -> TaskView:
    """The view of a task just inserted from ``sent`` (its :func:`insert_params`), given
    what the database decided: its due and creation times."""
    return TaskView(
        id=sent["id"],
        app_id=app_id,
        status=Status.PENDING,
        url=new.url,
        method=new.method,
        headers=new.headers,
        content_type=new.content_type,
        timeout=new.timeout,
        due=due,
        retry_count=0,
        max_retries=new.max_retries,
        backoff=new.backoff,
        created=created,
        modified=created,
        last_status_code=None,
        last_error=None,
        callback=new.callback,
        idempotency_key=new.idempotency_key,
        callback_of=new.callback_of,
        cancel_notice=new.cancel_notice,
        body_size=len(new.body),
    )


def due_expression() -> ColumnElement[Any]:
    """A new task's ``due``: ``not_before`` if bound, else the database's now + ``delay``."""
    due: ColumnElement[Any] = func.coalesce(
        bindparam("not_before", type_=tasks.c.due.type),
        func.now() + seconds(bindparam("delay", type_=Float)),
    )
    return due


# Built once: the hot path binds parameters instead of building and hashing a statement
# per request.
_INSERT = pg_insert(tasks).values(
    {
        **{name: bindparam(name, type_=tasks.c[name].type) for name in INSERT_COLUMNS},
        "due": due_expression(),
    }
)
_INSERT_RETURNING = _INSERT.returning(*VIEW_COLUMNS)
_INSERT_IDEMPOTENT = _INSERT.on_conflict_do_nothing(
    index_elements=["app_id", "idempotency_key"],
    index_where=tasks.c.idempotency_key.isnot(None),
).returning(*VIEW_COLUMNS)


def insert_task(db: Db, new: NewTask, app_id: uuid.UUID | None) -> tuple[TaskView, bool]:
    """Insert a PENDING task; return it and whether it is new.

    With an idempotency key already used by the application, the existing task is
    returned instead (``False``), even when the duplicate arrives concurrently: the
    unique index makes the second insert wait for the first and then do nothing.
    """
    stmt = _INSERT_RETURNING if new.idempotency_key is None else _INSERT_IDEMPOTENT
    row = db.execute(stmt, insert_params(new, app_id)).first()
    if row is not None:
        return TaskView.from_row(row), True
    existing = _by_idempotency_key(db, app_id, new.idempotency_key or "")
    if existing is None:  # the key's task was deleted between the two statements
        return insert_task(db, new, app_id)
    return existing, False


def insert_tasks(
    db: Db, batch: Sequence[NewTask], app_id: uuid.UUID | None
) -> list[tuple[TaskView, bool]]:
    """Insert a batch in one round trip (one by one where idempotency keys need checks)."""
    if any(new.idempotency_key for new in batch):
        return [insert_task(db, new, app_id) for new in batch]
    params = [insert_params(new, app_id) for new in batch]
    rows = db.execute(_INSERT.returning(*VIEW_COLUMNS, sort_by_parameter_order=True), params)
    return [(TaskView.from_row(row), True) for row in rows]


def _by_idempotency_key(db: Db, app_id: uuid.UUID | None, key: str) -> TaskView | None:
    """The application's task created with idempotency key ``key``, if any."""
    stmt = select(*VIEW_COLUMNS).where(
        tasks.c.app_id.is_not_distinct_from(app_id), tasks.c.idempotency_key == key
    )
    row = db.execute(stmt).first()
    return TaskView.from_row(row) if row else None


_CALLER = apps.OWNER.cte("caller")


def _joined_to_caller(insert: Insert) -> Select[Any]:
    """``caller`` (0 or 1 row) left-joined to what ``insert`` made for it. Only what the
    database decides comes back; the rest of each task's view is what was sent."""
    created = insert.returning(tasks.c.id, tasks.c.due, tasks.c.created).cte("created")
    return select(
        _CALLER.c.app_id.label("caller_id"), _CALLER.c.name.label("caller_name"), *created.c
    ).select_from(_CALLER.outerjoin(created, true()))


def _insert_for_caller(idempotent: bool) -> Select[Any]:
    """``caller`` (0 or 1 row) left-joined to the task inserted for it: no row means a bad
    key; a row without a task means the idempotency key was already used."""
    columns = [name for name in INSERT_COLUMNS if name != "app_id"]
    values = select(
        *[cast(bindparam(name, type_=tasks.c[name].type), tasks.c[name].type) for name in columns],
        _CALLER.c.app_id,
        due_expression(),
    ).select_from(_CALLER)
    insert = pg_insert(tasks).from_select([*columns, "app_id", "due"], values)
    if idempotent:
        insert = insert.on_conflict_do_nothing(
            index_elements=["app_id", "idempotency_key"],
            index_where=tasks.c.idempotency_key.isnot(None),
        )
    return _joined_to_caller(insert)


# Built once: requests only bind values.
# Named for the schema they were written for (see transitions.acquire).
_PLAIN = Prepared.of("ntq_enqueue_0002", _insert_for_caller(idempotent=False))
_IDEMPOTENT = Prepared.of("ntq_enqueue_idempotent_0002", _insert_for_caller(idempotent=True))


@dataclass(frozen=True)
class Submitted:
    """The tasks in the order given, each new or the one its idempotency key already
    made (``False``), and their application."""

    app_id: uuid.UUID | None
    app_name: str | None
    results: list[tuple[TaskView, bool]]


def submit(store: Store, batch: Sequence[NewTask], key: str | None) -> Submitted | None:
    """Insert all of ``batch`` or none of it, for the application owning API key ``key``;
    None if the key is not valid. ``key=None`` (authentication off) inserts
    application-less tasks.

    One task, or a batch without idempotency keys, costs exactly one statement, in
    autocommit; a batch with keys inserts task by task (each may already exist) in a
    transaction. Run again on a fresh connection if its own was lost.
    """
    if len(batch) == 1:
        return retrying(store.engine, lambda conn: _submit_one(conn, batch[0], key))
    return retrying(store.engine, lambda conn: _submit_batch(conn, batch, key))


def _submit_one(conn: Connection, new: NewTask, key: str | None) -> Submitted | None:
    if key is None:
        return Submitted(None, None, [insert_task(conn, new, None)])
    params = insert_params(new, None)
    params["digest"] = apps.digest(key)
    rows = (_IDEMPOTENT if new.idempotency_key else _PLAIN).rows(conn, params)
    if not rows:
        return None
    row = rows[0]
    if row.id is not None:
        view = new_view(new, params, row.caller_id, row.due, row.created)
        return Submitted(row.caller_id, row.caller_name, [(view, True)])
    existing = _by_idempotency_key(conn, row.caller_id, new.idempotency_key or "")
    result = (existing, False) if existing else insert_task(conn, new, row.caller_id)
    return Submitted(row.caller_id, row.caller_name, [result])


# A batch travels as one JSON array of these fields (bodies in base64), unpacked by
# json_to_recordset: one parameter, whatever the batch's size.
_BATCH_FIELDS = (
    "id",
    "url",
    "method",
    "headers",
    "body",
    "content_type",
    "timeout",
    "max_retries",
    "backoff",
    "callback",
    "not_before",
    "delay",
    "notice_policy",
)


def _batch_for_caller() -> Select[Any]:
    """Like :func:`_insert_for_caller`, for the tasks of a JSON array."""
    types = {
        **{name: tasks.c[name].type for name in _BATCH_FIELDS if name in tasks.c},
        "body": Text(),
        "headers": JSON(),
        "not_before": tasks.c.due.type,
        "delay": Float(),
    }
    given = (
        func.json_to_recordset(cast(bindparam("tasks"), JSON))
        .table_valued(*[column(name, types[name]) for name in _BATCH_FIELDS])
        .render_derived(name="given", with_types=True)
    )
    computed = {
        "app_id": _CALLER.c.app_id,
        "status": literal_column(f"'{Status.PENDING}'"),
        "retry_count": literal_column("0"),
        "idempotency_key": null(),
        "callback_of": null(),
        "headers": cast(given.c.headers, JSONB),
        "body": func.decode(given.c.body, literal_column("'base64'")),
    }
    values = (
        select(
            *[computed[name] if name in computed else given.c[name] for name in INSERT_COLUMNS],
            func.coalesce(given.c.not_before, func.now() + seconds(given.c.delay)),
        )
        .select_from(_CALLER)
        .join(given, true())
    )
    insert = pg_insert(tasks).from_select([*INSERT_COLUMNS, "due"], values)
    return _joined_to_caller(insert)


def _batch_json(rows: list[dict[str, Any]]) -> str:
    return serialize.dumps(
        [
            {
                **{name: row[name] for name in _BATCH_FIELDS},
                "body": base64.b64encode(row["body"]).decode(),
            }
            for row in rows
        ]
    ).decode()


_BATCH = Prepared.of("ntq_enqueue_batch_0002", _batch_for_caller())


def _submit_batch(conn: Connection, batch: Sequence[NewTask], key: str | None) -> Submitted | None:
    if key is None or any(new.idempotency_key for new in batch):
        return _batch_in_transaction(conn, batch, key)
    rows = [insert_params(new, None) for new in batch]
    found = _BATCH.rows(conn, {"digest": apps.digest(key), "tasks": _batch_json(rows)})
    if not found:
        return None
    owner = found[0].caller_id
    made = {row.id: row for row in found}
    return Submitted(
        owner,
        found[0].caller_name,
        [
            (new_view(new, sent, owner, made[sent["id"]].due, made[sent["id"]].created), True)
            for new, sent in zip(batch, rows, strict=True)
        ],
    )


def _batch_in_transaction(
    conn: Connection, batch: Sequence[NewTask], key: str | None
) -> Submitted | None:
    with transaction(conn):
        if key is None:
            return Submitted(None, None, _in_key_order(conn, batch, None))
        owner = apps.authenticate(conn, key)
        if owner is None:
            return None
        return Submitted(*owner, results=_in_key_order(conn, batch, owner[0]))


def _in_key_order(
    conn: Connection, batch: Sequence[NewTask], app_id: uuid.UUID | None
) -> list[tuple[TaskView, bool]]:
    """:func:`insert_tasks`, inserting in idempotency key order and answering in
    the batch's order. Each insert locks its key until commit: concurrent batches that
    share keys in different orders would otherwise deadlock."""
    order = sorted(range(len(batch)), key=lambda i: batch[i].idempotency_key or "")
    results = insert_tasks(conn, [batch[i] for i in order], app_id)
    by_position = dict(zip(order, results, strict=True))
    return [by_position[i] for i in range(len(batch))]
