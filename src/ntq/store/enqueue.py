"""The enqueue hot path: check the API key and insert the task in one statement.

``POST /`` is the busiest route, so it costs one round trip to PostgreSQL: the key's
lookup is a CTE of the INSERT, run in autocommit. The task is durable when the statement
returns, and a revoked key is refused at once (keys are never cached).

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
from typing import Any

from sqlalchemy import (
    JSON,
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
from ntq.records import NewTask, TaskView
from ntq.store import apps, transitions
from ntq.store.db import transaction
from ntq.store.models import PENDING
from ntq.store.prepared import Prepared

tasks = transitions.tasks

# The live application owning the presented key (no row: unknown or revoked key).
_CALLER = (
    select(apps.apps.c.id.label("app_id"), apps.apps.c.name)
    .join(apps.api_keys, apps.api_keys.c.app_id == apps.apps.c.id)
    .where(apps.api_keys.c.digest == bindparam("digest"),
           apps.api_keys.c.revoked.is_(None), apps.apps.c.revoked.is_(None))
    .cte("caller")
)


def _joined_to_caller(insert: Insert) -> Select[Any]:
    """``caller`` (0 or 1 row) left-joined to what ``insert`` made for it. Only what the
    database decides comes back; the rest of each task's view is what was sent."""
    created = insert.returning(tasks.c.id, tasks.c.due, tasks.c.created).cte("created")
    return (select(_CALLER.c.app_id.label("caller_id"), _CALLER.c.name.label("caller_name"),
                   *created.c)
            .select_from(_CALLER.outerjoin(created, true())))


def _insert_for_caller(idempotent: bool) -> Select[Any]:
    """``caller`` (0 or 1 row) left-joined to the task inserted for it: no row means a bad
    key; a row without a task means the idempotency key was already used."""
    columns = [name for name in transitions.INSERT_COLUMNS if name != "app_id"]
    values = select(*[cast(bindparam(name, type_=tasks.c[name].type), tasks.c[name].type)
                      for name in columns],
                    _CALLER.c.app_id, transitions.due_expression()).select_from(_CALLER)
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


def submit(conn: Connection, new: NewTask, key: str | None) -> Submitted | None:
    """Insert ``new`` for the application owning API key ``key``; None if the key is not
    valid. ``key=None`` (authentication off) inserts an application-less task.

    ``conn`` should be in autocommit: then a new task costs exactly one statement.
    """
    if key is None:
        return Submitted(None, None, [transitions.enqueue(conn, new, None)])
    params = transitions.insert_params(new, None)
    params["digest"] = apps.digest(key)
    rows = (_IDEMPOTENT if new.idempotency_key else _PLAIN).rows(conn, params)
    if not rows:
        return None
    row = rows[0]
    if row.id is not None:
        view = transitions.new_view(new, params, row.caller_id, row.due, row.created)
        return Submitted(row.caller_id, row.caller_name, [(view, True)])
    existing = transitions.by_idempotency_key(conn, row.caller_id, new.idempotency_key or "")
    result = (existing, False) if existing else transitions.enqueue(conn, new, row.caller_id)
    return Submitted(row.caller_id, row.caller_name, [result])


# A batch travels as one JSON array of these fields (bodies in base64), unpacked by
# json_to_recordset: one parameter, whatever the batch's size.
_BATCH_FIELDS = ("id", "url", "method", "headers", "body", "content_type", "timeout",
                 "max_retries", "backoff", "callback", "not_before", "delay", "notice_policy")


def _batch_for_caller() -> Select[Any]:
    """Like :func:`_insert_for_caller`, for the tasks of a JSON array."""
    types = {**{name: tasks.c[name].type for name in _BATCH_FIELDS if name in tasks.c},
             "body": Text(), "headers": JSON(), "not_before": tasks.c.due.type,
             "delay": Float()}
    given = (func.json_to_recordset(cast(bindparam("tasks"), JSON))
             .table_valued(*[column(name, types[name]) for name in _BATCH_FIELDS])
             .render_derived(name="given", with_types=True))
    computed = {
        "app_id": _CALLER.c.app_id, "status": literal_column(f"'{PENDING}'"),
        "retry_count": literal_column("0"), "idempotency_key": null(), "callback_of": null(),
        "headers": cast(given.c.headers, JSONB),
        "body": func.decode(given.c.body, literal_column("'base64'")),
    }
    values = select(*[computed[name] if name in computed else given.c[name]
                      for name in transitions.INSERT_COLUMNS],
                    func.coalesce(given.c.not_before,
                                  func.now() + transitions.seconds(given.c.delay))
                    ).select_from(_CALLER).join(given, true())
    insert = pg_insert(tasks).from_select([*transitions.INSERT_COLUMNS, "due"], values)
    return _joined_to_caller(insert)


def _batch_json(rows: list[dict[str, Any]]) -> str:
    return serialize.dumps([
        {**{name: row[name] for name in _BATCH_FIELDS},
         "body": base64.b64encode(row["body"]).decode()} for row in rows
    ]).decode()


_BATCH = Prepared.of("ntq_enqueue_batch_0002", _batch_for_caller())


def submit_batch(conn: Connection, batch: Sequence[NewTask],
                 key: str | None) -> Submitted | None:
    """Insert all of ``batch`` or none of it, for the application owning ``key`` (None:
    authentication off); None if the key is not valid.

    ``conn`` should be in autocommit: a batch without idempotency keys is one statement.
    One with keys inserts task by task (each may already exist) in a transaction.
    """
    if key is None or any(new.idempotency_key for new in batch):
        return _batch_in_transaction(conn, batch, key)
    rows = [transitions.insert_params(new, None) for new in batch]
    found = _BATCH.rows(conn, {"digest": apps.digest(key), "tasks": _batch_json(rows)})
    if not found:
        return None
    owner = found[0].caller_id
    made = {row.id: row for row in found}
    return Submitted(owner, found[0].caller_name, [
        (transitions.new_view(new, sent, owner, made[sent["id"]].due, made[sent["id"]].created),
         True) for new, sent in zip(batch, rows, strict=True)])


def _batch_in_transaction(conn: Connection, batch: Sequence[NewTask],
                          key: str | None) -> Submitted | None:
    with transaction(conn):
        if key is None:
            return Submitted(None, None, _in_key_order(conn, batch, None))
        owner = apps.authenticate(conn, key)
        if owner is None:
            return None
        return Submitted(*owner, results=_in_key_order(conn, batch, owner[0]))


def _in_key_order(conn: Connection, batch: Sequence[NewTask],
                  app_id: uuid.UUID | None) -> list[tuple[TaskView, bool]]:
    """:func:`transitions.enqueue_many`, inserting in idempotency key order and answering in
    the batch's order. Each insert locks its key until commit: concurrent batches that
    share keys in different orders would otherwise deadlock."""
    order = sorted(range(len(batch)), key=lambda i: batch[i].idempotency_key or "")
    results = transitions.enqueue_many(conn, [batch[i] for i in order], app_id)
    by_position = dict(zip(order, results, strict=True))
    return [by_position[i] for i in range(len(batch))]
