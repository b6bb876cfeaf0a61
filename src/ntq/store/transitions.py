"""Every task state transition, one short function each.

Each write that ends an attempt is guarded by the identity of the attempt it acquired (new at
every acquire, never reused, not even after a replay) and by the task still being PENDING,
so a stale, slow or cancelled attempt never overwrites a newer state; a terminal task leaves
its state only by an explicit replay. Functions take an open connection or session; the
caller owns the transaction and notifies Redis after commit.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    CursorResult,
    Float,
    Table,
    and_,
    any_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ntq import serialize
from ntq.records import Acquired, AttemptResult, NewTask, TaskView, Verdict
from ntq.store.models import CANCELLED, COMPLETED, FAILED, PENDING, TERMINAL, App, Attempt, Task
from ntq.store.prepared import Prepared
from ntq.store.uuid7 import uuid7

Db = Connection | Session

tasks = cast(Table, Task.__table__)
apps = cast(Table, App.__table__)
attempts = cast(Table, Attempt.__table__)

# Extra lease beyond the attempt's timeout: covers clock skew and the time to record.
LEASE_GRACE = 10
# A cancel notice (the DELETE sent to the hook) gets at most this long per try.
NOTICE_TIMEOUT = 10

# What clients see of a task: not the body (it may be large), nor the workers' bookkeeping.
_HIDDEN = frozenset({"body", "attempt_id", "notice_policy", "notice_owed", "deleted"})
VIEW_COLUMNS = [c for c in tasks.c if c.name not in _HIDDEN] + [
    tasks.c.notice_policy.label("cancel_notice"),
    func.octet_length(tasks.c.body).label("body_size"),
]
# A task the application deleted, kept only until its cancel notice is sent.
VISIBLE = tasks.c.deleted.is_(False)


def seconds(value: Any) -> ColumnElement[Any]:
    """``value`` seconds as a PostgreSQL interval expression."""
    interval: ColumnElement[Any] = literal_column("interval '1 second'") * value
    return interval


def insert_params(new: NewTask, app_id: uuid.UUID | None) -> dict[str, Any]:
    """The bound values of one new task's row (its id is minted here)."""
    return {
        "id": uuid7(), "app_id": app_id, "status": PENDING, "url": new.url,
        "method": new.method, "headers": new.headers, "body": new.body,
        "content_type": new.content_type, "timeout": new.timeout,
        "not_before": new.not_before, "delay": float(new.delay),
        "retry_count": 0, "max_retries": new.max_retries, "backoff": new.backoff,
        "callback": new.callback, "idempotency_key": new.idempotency_key,
        "callback_of": new.callback_of, "notice_policy": new.cancel_notice,
    }


def new_view(new: NewTask, sent: dict[str, Any], app_id: uuid.UUID | None, due: datetime,
             created: datetime) -> TaskView:
    """The view of a task just inserted from ``sent`` (its :func:`insert_params`), given
    what the database decided: its due and creation times."""
    return TaskView(
        id=sent["id"], app_id=app_id, status=PENDING, url=new.url, method=new.method,
        headers=new.headers, content_type=new.content_type, timeout=new.timeout, due=due,
        retry_count=0, max_retries=new.max_retries, backoff=new.backoff, created=created,
        modified=created, last_status_code=None, last_error=None, callback=new.callback,
        idempotency_key=new.idempotency_key, callback_of=new.callback_of,
        cancel_notice=new.cancel_notice, body_size=len(new.body))


INSERT_COLUMNS = (
    "id", "app_id", "status", "url", "method", "headers", "body", "content_type", "timeout",
    "retry_count", "max_retries", "backoff", "callback", "idempotency_key", "callback_of",
    "notice_policy",
)


def due_expression() -> ColumnElement[Any]:
    """A new task's ``due``: ``not_before`` if bound, else the database's now + ``delay``."""
    due: ColumnElement[Any] = func.coalesce(
        bindparam("not_before", type_=tasks.c.due.type),
        func.now() + seconds(bindparam("delay", type_=Float)))
    return due


# Built once: the hot path binds parameters instead of building and hashing a statement
# per request.
_INSERT = pg_insert(tasks).values({
    **{name: bindparam(name, type_=tasks.c[name].type) for name in INSERT_COLUMNS},
    "due": due_expression(),
})
_INSERT_RETURNING = _INSERT.returning(*VIEW_COLUMNS)
_INSERT_IDEMPOTENT = _INSERT.on_conflict_do_nothing(
    index_elements=["app_id", "idempotency_key"],
    index_where=tasks.c.idempotency_key.isnot(None),
).returning(*VIEW_COLUMNS)


def enqueue(db: Db, new: NewTask, app_id: uuid.UUID | None) -> tuple[TaskView, bool]:
    """Insert a PENDING task; return it and whether it is new.

    With an idempotency key already used by the application, the existing task is
    returned instead (``False``), even when the duplicate arrives concurrently: the
    unique index makes the second insert wait for the first and then do nothing.
    """
    stmt = _INSERT_RETURNING if new.idempotency_key is None else _INSERT_IDEMPOTENT
    row = db.execute(stmt, insert_params(new, app_id)).first()
    if row is not None:
        return TaskView.from_row(row), True
    existing = by_idempotency_key(db, app_id, new.idempotency_key or "")
    if existing is None:  # the key's task was deleted between the two statements
        return enqueue(db, new, app_id)
    return existing, False


def enqueue_many(db: Db, batch: Sequence[NewTask],
                 app_id: uuid.UUID | None) -> list[tuple[TaskView, bool]]:
    """Insert a batch in one round trip (one by one where idempotency keys need checks)."""
    if any(new.idempotency_key for new in batch):
        return [enqueue(db, new, app_id) for new in batch]
    params = [insert_params(new, app_id) for new in batch]
    rows = db.execute(_INSERT.returning(*VIEW_COLUMNS, sort_by_parameter_order=True), params)
    return [(TaskView.from_row(row), True) for row in rows]


def by_idempotency_key(db: Db, app_id: uuid.UUID | None, key: str) -> TaskView | None:
    """The application's task created with idempotency key ``key``, if any."""
    stmt = select(*VIEW_COLUMNS).where(
        tasks.c.app_id.is_not_distinct_from(app_id), tasks.c.idempotency_key == key
    )
    row = db.execute(stmt).first()
    return TaskView.from_row(row) if row else None


def get(db: Db, task_id: uuid.UUID, app_id: uuid.UUID | None) -> TaskView | None:
    """The task, if it exists and belongs to ``app_id``."""
    stmt = select(*VIEW_COLUMNS).where(
        tasks.c.id == task_id, tasks.c.app_id.is_not_distinct_from(app_id), VISIBLE
    )
    row = db.execute(stmt).first()
    return TaskView.from_row(row) if row else None


def _acquire_statement() -> Prepared:
    secret = (
        select(apps.c.signing_secret).where(apps.c.id == tasks.c.app_id).scalar_subquery()
    )
    delivering = tasks.c.status == PENDING
    lease = case((delivering, tasks.c.timeout), else_=NOTICE_TIMEOUT * 3) + LEASE_GRACE
    stmt = (
        update(tasks)
        .where(tasks.c.id == any_(bindparam("ids", type_=ARRAY(tasks.c.id.type))),
               tasks.c.due <= func.now(), delivering | tasks.c.notice_owed)
        .values(
            retry_count=case((delivering, tasks.c.retry_count + 1),
                             else_=tasks.c.retry_count),
            # A notice keeps the identity its cancel gave it: the same message if retried.
            attempt_id=case((delivering, func.gen_random_uuid()), else_=tasks.c.attempt_id),
            due=func.now() + seconds(lease),
            modified=func.now(),
            # ``due`` as it was until now: when the task became due (not before it existed).
            first_due=func.coalesce(tasks.c.first_due,
                                    func.greatest(tasks.c.due, tasks.c.created)),
        )
        .returning(*[tasks.c[name] for name in Acquired.__dataclass_fields__ if name != "secret"],
                   secret.label("secret"))
    )
    # Named for the schema it was written for: behind a pooler, a server connection may
    # hold the previous version's statement of the same name.
    return Prepared.of("ntq_acquire_0004", stmt)


_ACQUIRE = _acquire_statement()


def acquire(conn: Db, ids: Sequence[uuid.UUID]) -> list[Acquired]:
    """Take the due tasks among ``ids``: PENDING ones for one delivery attempt each,
    CANCELLED ones that still owe their hook a DELETE notice.

    One statement: a delivery gets a new ``attempt_id`` and ``retry_count`` += 1, and
    ``due`` is pushed past the attempt's end (timeout plus grace) so no other worker takes
    the task while this attempt can still run. Ids that are not due (running elsewhere,
    delayed, finished, deleted) are skipped.
    """
    return [Acquired.from_row(row) for row in _ACQUIRE.rows(_connection(conn), {"ids": list(ids)})]


def _connection(db: Db) -> Connection:
    """The Core connection under ``db`` (prepared statements run on the driver)."""
    return db if isinstance(db, Connection) else db.connection()


@dataclass(frozen=True)
class Finished:
    """What a guarded write changed: the new status (None if stale), the callback task it
    created, if any, and the outcome recorded for the attempt."""

    status: str | None
    callback_id: uuid.UUID | None = None
    outcome: str = ""


Outcome = tuple[Acquired, AttemptResult, Verdict]


def finish(conn: Db, task: Acquired, result: AttemptResult, verdict: Verdict) -> Finished:
    """Apply one attempt's verdict: :func:`finish_many` for a single attempt."""
    return finish_many(conn, [(task, result, verdict)])[0]


def finish_many(conn: Db, outcomes: Sequence[Outcome]) -> list[Finished]:
    """Apply verdicts, each guarded by its attempt's identity, and record the attempts: one
    statement for the whole batch.

    A status is None when the attempt was stale (the task was cancelled, deleted or
    re-acquired meanwhile): nothing changed, and the attempt is recorded as ``stale``.
    Reaching a terminal state with a ``callback`` creates the callback's delivery task
    (in the caller's transaction: give one for tasks with callbacks).
    """
    rows = _FINISH.rows(_connection(conn), {"batch": _finish_json(outcomes)})
    applied = {(row.id, row.attempt_id) for row in rows}
    finished = [_finished(task, verdict, applied) for task, _, verdict in outcomes]
    return [_with_callback(conn, task, done)
            for (task, _, _), done in zip(outcomes, finished, strict=True)]


_STATUS_OF = {"complete": COMPLETED, "fail": FAILED, "retry": PENDING}


def _finished(task: Acquired, verdict: Verdict,
              applied: set[tuple[uuid.UUID, uuid.UUID]]) -> Finished:
    if (task.id, task.attempt_id) in applied:
        return Finished(_STATUS_OF[verdict.outcome], outcome=verdict.outcome)
    return Finished(None, outcome="interrupted" if verdict.outcome == "interrupted" else "stale")


def _with_callback(conn: Db, task: Acquired, done: Finished) -> Finished:
    if done.status in (None, PENDING) or not task.callback:
        return done
    return Finished(done.status, add_callback(conn, task.id), done.outcome)


# The batch travels as one JSON array (bodies in base64). The guarded UPDATE applies each
# verdict (interrupted attempts change nothing) and the INSERT records every attempt, as
# ``stale`` where the UPDATE found a newer state; tasks deleted meanwhile get no record
# (a task the UPDATE did not change is locked by the EXISTS, so one deleted concurrently
# is seen as gone instead of failing the batch on the foreign key; a locking read skips
# the rows this statement updated, hence the IN).
# The guard compares ``retry_count`` too: the previous version's workers, while they run
# beside this one, acquire without giving the attempt a new identity.
_FINISH = Prepared.of("ntq_finish_0002", text(
    """
    WITH given AS (
        SELECT * FROM json_to_recordset(CAST(:batch AS json)) AS g(
            task_id uuid, attempt_id uuid, number integer, status text, code integer,
            last_error text, delay float8, method text, started timestamptz, elapsed_ms integer,
            reason text, headers json, body text, truncated boolean, error text,
            outcome text)
    ),
    applied AS (
        UPDATE tasks AS t
        SET status = g.status, modified = now(), last_status_code = g.code,
            last_error = g.last_error, due = now() + g.delay * interval '1 second'
        FROM given AS g
        WHERE t.id = g.task_id AND t.attempt_id = g.attempt_id AND t.retry_count = g.number
          AND t.status = 'PENDING' AND g.outcome <> 'interrupted'
        RETURNING t.id, t.attempt_id
    ),
    recorded AS (
        INSERT INTO attempts (task_id, number, method, started, elapsed_ms, status_code,
                              reason, headers, body, truncated, error, outcome)
        SELECT g.task_id, g.number, g.method, g.started, g.elapsed_ms, g.code, g.reason,
               CAST(g.headers AS jsonb), decode(g.body, 'base64'), g.truncated, g.error,
               CASE WHEN (g.task_id, g.attempt_id) IN (SELECT id, attempt_id FROM applied)
                    THEN g.outcome
                    WHEN g.outcome = 'interrupted' THEN 'interrupted'
                    ELSE 'stale' END
        FROM given AS g
        WHERE g.task_id IN (SELECT id FROM applied)
           OR EXISTS (SELECT 1 FROM tasks WHERE id = g.task_id FOR KEY SHARE)
    )
    SELECT id, attempt_id FROM applied
    """
))


def _finish_json(outcomes: Sequence[Outcome]) -> str:
    return serialize.dumps([{
        "task_id": task.id, "attempt_id": task.attempt_id, "number": task.retry_count,
        "status": _STATUS_OF.get(verdict.outcome), "code": result.status_code,
        "last_error": _storable(verdict.error), "delay": float(verdict.delay or 0),
        "method": result.method, "started": result.started, "elapsed_ms": result.elapsed_ms,
        "reason": _storable(result.reason),
        "headers": _storable_headers(result.headers),
        "body": None if result.body is None else base64.b64encode(result.body).decode(),
        "truncated": result.truncated, "error": _storable(result.error),
        "outcome": verdict.outcome,
    } for task, result, verdict in outcomes]).decode()


def _storable(text: str | None) -> Any:
    """``text`` without NUL characters, which PostgreSQL's text and jsonb refuse: a hook
    could otherwise put them in a reason phrase or header and make its outcome, and every
    other in the batch, unrecordable."""
    return text.replace("\x00", "") if text else text


def _storable_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    return None if headers is None else {
        _storable(name): _storable(value) for name, value in headers.items()}


def finish_notice(conn: Db, task: Acquired, result: AttemptResult) -> bool:
    """Record the DELETE sent to a cancelled task's hook: the notice is no longer owed (unless
    the task was cancelled again since, which owes a new one). A task deleted by its
    application, kept only for this notice, goes now. Run in a transaction."""
    owed = conn.execute(
        update(tasks)
        .where(tasks.c.id == task.id, tasks.c.attempt_id == task.attempt_id,
               tasks.c.notice_owed)
        .values(notice_owed=False, modified=func.now())
        .returning(tasks.c.deleted)).first()
    if owed is not None and owed.deleted:
        conn.execute(delete(tasks).where(tasks.c.id == task.id))
        return True
    # Locked against deletion, so that the attempt's row has its task.
    if conn.execute(select(tasks.c.id).where(tasks.c.id == task.id)
                    .with_for_update(key_share=True)).first() is None:
        return True
    conn.execute(insert(attempts).values(
        task_id=task.id, number=task.retry_count, method=result.method,
        started=result.started, elapsed_ms=result.elapsed_ms,
        status_code=result.status_code, reason=_storable(result.reason),
        headers=_storable_headers(result.headers),
        body=result.body, truncated=result.truncated, error=_storable(result.error),
        outcome="cancel_notice"))
    return True


def latest_response(db: Db, task_id: uuid.UUID) -> Any:
    """The latest delivery attempt (cancel notices and interruptions left out), or None."""
    stmt = (
        select(attempts)
        .where(attempts.c.task_id == task_id,
               attempts.c.outcome.in_(["complete", "retry", "fail"]))
        .order_by(attempts.c.id.desc())
        .limit(1)
    )
    return db.execute(stmt).first()


def add_callback(conn: Db, task_id: uuid.UUID) -> uuid.UUID | None:
    """Create the task that POSTs ``{"task", "response"}`` to the finished task's callback."""
    row = conn.execute(select(*VIEW_COLUMNS).where(tasks.c.id == task_id)).first()
    if row is None or not row.callback:
        return None
    view = TaskView.from_row(row)
    response = latest_response(conn, task_id)
    payload = {"task": serialize.task_dict(view),
               "response": serialize.attempt_dict(response, True) if response else None}
    new = NewTask(url=view.callback or "", body=serialize.dumps(payload),
                  content_type="application/json", timeout=view.timeout,
                  max_retries=view.max_retries, backoff=view.backoff, callback_of=view.id)
    created, _ = enqueue(conn, new, row.app_id)
    return created.id


def _notice_owed() -> ColumnElement[bool]:
    """Whether cancelling the PENDING task owes its hook a DELETE notice, by its policy."""
    owed: ColumnElement[bool] = case(
        (tasks.c.notice_policy == "always", true()),
        (tasks.c.notice_policy == "started", tasks.c.retry_count > 0),
        else_=false())
    return owed


def cancel(db: Db, task_id: uuid.UUID, app_id: uuid.UUID | None
           ) -> tuple[TaskView, bool] | None:
    """PENDING -> CANCELLED; the running attempt, if any, can no longer finish it (its
    identity is replaced by the notice's).

    Returns the cancelled task and whether its hook is owed a DELETE notice (see
    ``cancel_notice``), or None if it was not PENDING.
    """
    stmt = (
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.app_id.is_not_distinct_from(app_id),
               tasks.c.status == PENDING, VISIBLE)
        .values(status=CANCELLED, modified=func.now(), due=func.now(),
                notice_owed=_notice_owed(), attempt_id=func.gen_random_uuid(),
                last_error="cancelled")
        .returning(*VIEW_COLUMNS, tasks.c.notice_owed)
    )
    row = db.execute(stmt).first()
    return (TaskView.from_row(row), row.notice_owed) if row else None


def replay(db: Db, task_id: uuid.UUID, app_id: uuid.UUID | None) -> TaskView | None:
    """FAILED or CANCELLED -> PENDING, due now, with a fresh retry budget; the attempt
    history is kept. No attempt holds the task until the next acquire."""
    stmt = (
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.app_id.is_not_distinct_from(app_id),
               tasks.c.status.in_([FAILED, CANCELLED]), VISIBLE)
        .values(status=PENDING, due=func.now(), retry_count=0, modified=func.now(),
                last_error=None, notice_owed=False, attempt_id=None, first_due=None)
        .returning(*VIEW_COLUMNS)
    )
    row = db.execute(stmt).first()
    return TaskView.from_row(row) if row else None


def delete_all(db: Db, app_id: uuid.UUID | None) -> list[uuid.UUID]:
    """Delete every task of the application (their attempts go with them).

    Tasks whose hook is owed a DELETE notice, by the same rule as :func:`cancel`, are
    cancelled instead and kept out of sight (``deleted``) until it is sent; their ids are
    returned.
    """
    mine = tasks.c.app_id.is_not_distinct_from(app_id)
    pending = tasks.c.status == PENDING
    # Lock the tasks first (in id order, as every bulk write here does), so that no worker
    # starts an attempt between choosing which tasks owe a notice and deleting the rest.
    db.execute(select(func.count()).select_from(
        select(tasks.c.id).where(mine, VISIBLE).order_by(tasks.c.id).with_for_update()
        .subquery()))
    kept = db.execute(
        update(tasks)
        .where(mine, VISIBLE, or_(and_(pending, _notice_owed()), tasks.c.notice_owed))
        .values(status=CANCELLED, deleted=True, notice_owed=True, idempotency_key=None,
                modified=func.now(), due=func.now(), last_error="deleted",
                attempt_id=case((pending, func.gen_random_uuid()),
                                else_=tasks.c.attempt_id))
        .returning(tasks.c.id)).scalars().all()
    db.execute(delete(tasks).where(mine, tasks.c.notice_owed.is_(False)))
    return list(kept)


def forget_responses(db: Db, task_id: uuid.UUID) -> None:
    """Drop the stored response headers and bodies of the task's attempts."""
    db.execute(update(attempts).where(attempts.c.task_id == task_id)
               .values(headers=None, body=None))


Cursor = tuple[datetime, uuid.UUID]


def overdue(conn: Db, limit: int, after: Cursor | None = None) -> list[Cursor]:
    """``(due, id)`` of PENDING tasks whose due time has passed, oldest first.

    ``after`` continues a sweep where the previous batch ended. The partial index on
    ``(due, id) WHERE status = 'PENDING'`` serves both the filter and the order.
    """
    stmt = select(tasks.c.due, tasks.c.id).where(tasks.c.status == PENDING,
                                                 tasks.c.due <= func.now())
    if after is not None:
        stmt = stmt.where(tuple_(tasks.c.due, tasks.c.id) > tuple_(*after))
    stmt = stmt.order_by(tasks.c.due, tasks.c.id).limit(limit)
    return [(row.due, row.id) for row in conn.execute(stmt)]


def overdue_notices(conn: Db, limit: int) -> list[uuid.UUID]:
    """Cancelled tasks whose DELETE notice is owed and due (a partial index serves it)."""
    stmt = (select(tasks.c.id).where(tasks.c.notice_owed, tasks.c.due <= func.now())
            .order_by(tasks.c.due).limit(limit))
    return list(conn.execute(stmt).scalars())


def cleanup(conn: Db, older_than_days: float, limit: int = 5000) -> int:
    """Delete up to ``limit`` finished tasks last modified more than the given days ago
    (never a PENDING one, nor one whose cancel notice is still owed)."""
    victims = (
        select(tasks.c.id)
        .where(tasks.c.status.in_(TERMINAL), tasks.c.notice_owed.is_(False),
               tasks.c.modified < func.now() - seconds(older_than_days * 86400))
        .limit(limit)
    )
    result = conn.execute(delete(tasks).where(tasks.c.id.in_(victims.scalar_subquery())))
    return int(cast(CursorResult[Any], result).rowcount)
