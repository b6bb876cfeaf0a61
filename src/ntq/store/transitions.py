"""Every task state transition, one short function each: acquire, finish, cancel, replay,
delete, requeue sweeps and cleanup. No task is inserted here (see :mod:`ntq.store.enqueue`,
which also inserts the callback tasks that a finish or a cancel creates).

Each write that ends an attempt is guarded by the identity of the attempt it acquired (new at
every acquire, never reused, not even after a replay) and by the task still being PENDING,
so a stale, slow or cancelled attempt never overwrites a newer state; a terminal task leaves
its state only by an explicit replay.

The worker's functions take the :class:`~ntq.store.db.Store` and run their own statements:
one autocommit statement each, except that a finish creating callback tasks, and a cancel
notice's record, are one transaction; all run again on a fresh connection if theirs was
lost. The others take the connection or session of a transaction their caller holds (the
web's request, the requeue poller's locked round). Callers notify Redis after commit.
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
    and_,
    any_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)

from ntq import serialize
from ntq.records import (
    TERMINAL,
    Acquired,
    AttemptResult,
    NewTask,
    Outcome,
    Status,
    TaskView,
    Verdict,
)
from ntq.store import enqueue
from ntq.store.db import Db, Store, retrying
from ntq.store.models import VIEW_COLUMNS, VISIBLE, apps, attempts, seconds, tasks
from ntq.store.prepared import Prepared

# Extra lease beyond the attempt's timeout: covers clock skew and the time to record.
LEASE_GRACE = 10
# A cancel notice (the DELETE sent to the hook) gets at most this long per try.
NOTICE_TIMEOUT = 10


# Two reads stay beside the changes they serve: the task a change applies to (get), and the
# response a callback reports (latest_response).
def get(db: Db, task_id: uuid.UUID, app_id: uuid.UUID | None) -> TaskView | None:
    """The task, if it exists and belongs to ``app_id``."""
    stmt = select(*VIEW_COLUMNS).where(
        tasks.c.id == task_id, tasks.c.app_id.is_not_distinct_from(app_id), VISIBLE
    )
    row = db.execute(stmt).first()
    return TaskView.from_row(row) if row else None


def _acquire_statement() -> Prepared:
    secret = select(apps.c.signing_secret).where(apps.c.id == tasks.c.app_id).scalar_subquery()
    delivering = tasks.c.status == Status.PENDING
    lease = case((delivering, tasks.c.timeout), else_=NOTICE_TIMEOUT * 3) + LEASE_GRACE
    stmt = (
        update(tasks)
        .where(
            tasks.c.id == any_(bindparam("ids", type_=ARRAY(tasks.c.id.type))),
            tasks.c.due <= func.now(),
            delivering | tasks.c.notice_owed,
        )
        .values(
            retry_count=case((delivering, tasks.c.retry_count + 1), else_=tasks.c.retry_count),
            # A notice keeps the identity its cancel gave it: the same message if retried.
            attempt_id=case((delivering, func.gen_random_uuid()), else_=tasks.c.attempt_id),
            due=func.now() + seconds(lease),
            modified=func.now(),
            # ``due`` as it was until now: when the task became due (not before it existed).
            first_due=func.coalesce(tasks.c.first_due, func.greatest(tasks.c.due, tasks.c.created)),
        )
        .returning(
            *[tasks.c[name] for name in Acquired.__dataclass_fields__ if name != "secret"],
            secret.label("secret"),
        )
    )
    # Named for the schema it was written for: behind a pooler, a server connection may
    # hold the previous version's statement of the same name.
    return Prepared.of("ntq_acquire_0004", stmt)


_ACQUIRE = _acquire_statement()


def acquire(store: Store, ids: Sequence[uuid.UUID]) -> list[Acquired]:
    """Take the due tasks among ``ids``: PENDING ones for one delivery attempt each,
    CANCELLED ones that still owe their hook a DELETE notice.

    One statement: a delivery gets a new ``attempt_id`` and ``retry_count`` += 1, and
    ``due`` is pushed past the attempt's end (timeout plus grace) so no other worker takes
    the task while this attempt can still run. Ids that are not due (running elsewhere,
    delayed, finished, deleted) are skipped. Run again on a fresh connection if its own
    was lost.
    """
    rows = retrying(store.engine, lambda conn: _ACQUIRE.rows(conn, {"ids": list(ids)}))
    return [Acquired.from_row(row) for row in rows]


@dataclass(frozen=True)
class Finished:
    """What a guarded write changed: the new status (None if stale), the outcome recorded
    for the attempt, and the callback task it created, if any."""

    status: Status | None
    outcome: Outcome
    callback_id: uuid.UUID | None = None


# One attempt as the worker ends it: the task it held, what the call produced, the verdict.
Judged = tuple[Acquired, AttemptResult, Verdict]


def finish(store: Store, task: Acquired, result: AttemptResult, verdict: Verdict) -> Finished:
    """Apply one attempt's verdict: :func:`finish_many` for a single attempt."""
    return finish_many(store, [(task, result, verdict)])[0]


def finish_many(store: Store, judged: Sequence[Judged]) -> list[Finished]:
    """Apply verdicts, each guarded by its attempt's identity, and record the attempts: one
    autocommit statement for the whole batch.

    A status is None when the attempt was stale (the task was cancelled, deleted or
    re-acquired meanwhile): nothing changed, and the attempt is recorded as ``stale``.
    Reaching a terminal state with a ``callback`` creates the callback's delivery task, in
    one transaction with the batch's statement. Run again on a fresh connection if its own
    was lost.
    """
    with_callbacks = any(task.callback for task, _, _ in judged)
    return retrying(store.engine, lambda conn: _finish_many(conn, judged), atomic=with_callbacks)


def _finish_many(conn: Connection, judged: Sequence[Judged]) -> list[Finished]:
    rows = _FINISH.rows(conn, {"batch": _finish_json(judged)})
    applied = {(row.id, row.attempt_id) for row in rows}
    finished = [_finished(task, verdict, applied) for task, _, verdict in judged]
    return [
        _with_callback(conn, task, done)
        for (task, _, _), done in zip(judged, finished, strict=True)
    ]


_STATUS_OF = {
    Outcome.COMPLETE: Status.COMPLETED,
    Outcome.FAIL: Status.FAILED,
    Outcome.RETRY: Status.PENDING,
}


def _finished(
    task: Acquired, verdict: Verdict, applied: set[tuple[uuid.UUID, uuid.UUID]]
) -> Finished:
    outcome = verdict.decision
    if (task.id, task.attempt_id) in applied:
        return Finished(_STATUS_OF[outcome], outcome)
    return Finished(None, Outcome.INTERRUPTED if outcome is Outcome.INTERRUPTED else Outcome.STALE)


def _with_callback(conn: Connection, task: Acquired, done: Finished) -> Finished:
    if done.status in (None, Status.PENDING) or not task.callback:
        return done
    return Finished(done.status, done.outcome, _add_callback(conn, task.id))


# The batch travels as one JSON array (bodies in base64). The guarded UPDATE applies each
# verdict (interrupted attempts change nothing) and the INSERT records every attempt, as
# ``stale`` where the UPDATE found a newer state; tasks deleted meanwhile get no record
# (a task the UPDATE did not change is locked by the EXISTS, so one deleted concurrently
# is seen as gone instead of failing the batch on the foreign key; a locking read skips
# the rows this statement updated, hence the IN).
# The guard compares ``retry_count`` too: the previous version's workers, while they run
# beside this one, acquire without giving the attempt a new identity.
_FINISH = Prepared.of(
    "ntq_finish_0002",
    text(
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
    ),
)


def _finish_json(judged: Sequence[Judged]) -> str:
    return serialize.dumps(
        [
            {
                "task_id": task.id,
                "attempt_id": task.attempt_id,
                "number": task.retry_count,
                "status": _STATUS_OF.get(verdict.decision),
                "code": result.status_code,
                "last_error": _storable(verdict.error),
                "delay": float(verdict.delay or 0),
                "method": result.method,
                "started": result.started,
                "elapsed_ms": result.elapsed_ms,
                "reason": _storable(result.reason),
                "headers": _storable_headers(result.headers),
                "body": None if result.body is None else base64.b64encode(result.body).decode(),
                "truncated": result.truncated,
                "error": _storable(result.error),
                "outcome": verdict.decision,
            }
            for task, result, verdict in judged
        ]
    ).decode()


def _storable(text: str | None) -> Any:
    """``text`` without NUL characters, which PostgreSQL's text and jsonb refuse: a hook
    could otherwise put them in a reason phrase or header and make its outcome, and every
    other in the batch, unrecordable."""
    return text.replace("\x00", "") if text else text


def _storable_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    return (
        None
        if headers is None
        else {_storable(name): _storable(value) for name, value in headers.items()}
    )


def finish_notice(store: Store, task: Acquired, result: AttemptResult) -> bool:
    """Record the DELETE sent to a cancelled task's hook: the notice is no longer owed (unless
    the task was cancelled again since, which owes a new one). A task deleted by its
    application, kept only for this notice, goes now. One transaction, run again on a
    fresh connection if its own was lost; True once committed."""
    retrying(store.engine, lambda conn: _finish_notice(conn, task, result), atomic=True)
    return True


def _finish_notice(conn: Connection, task: Acquired, result: AttemptResult) -> None:
    owed = conn.execute(
        update(tasks)
        .where(tasks.c.id == task.id, tasks.c.attempt_id == task.attempt_id, tasks.c.notice_owed)
        .values(notice_owed=False, modified=func.now())
        .returning(tasks.c.deleted)
    ).first()
    if owed is not None and owed.deleted:
        conn.execute(delete(tasks).where(tasks.c.id == task.id))
        return
    # Locked against deletion, so that the attempt's row has its task.
    if (
        conn.execute(
            select(tasks.c.id).where(tasks.c.id == task.id).with_for_update(key_share=True)
        ).first()
        is None
    ):
        return
    conn.execute(
        insert(attempts).values(
            task_id=task.id,
            number=task.retry_count,
            method=result.method,
            started=result.started,
            elapsed_ms=result.elapsed_ms,
            status_code=result.status_code,
            reason=_storable(result.reason),
            headers=_storable_headers(result.headers),
            body=result.body,
            truncated=result.truncated,
            error=_storable(result.error),
            outcome=Outcome.CANCEL_NOTICE,
        )
    )


def latest_response(db: Db, task_id: uuid.UUID) -> Any:
    """The latest delivery attempt (cancel notices and interruptions left out), or None."""
    stmt = (
        select(attempts)
        .where(
            attempts.c.task_id == task_id,
            attempts.c.outcome.in_([Outcome.COMPLETE, Outcome.RETRY, Outcome.FAIL]),
        )
        .order_by(attempts.c.id.desc())
        .limit(1)
    )
    return db.execute(stmt).first()


def _add_callback(conn: Db, task_id: uuid.UUID) -> uuid.UUID | None:
    """Create the task that POSTs ``{"task", "response"}`` to the finished task's callback."""
    row = conn.execute(select(*VIEW_COLUMNS).where(tasks.c.id == task_id)).first()
    if row is None or not row.callback:
        return None
    view = TaskView.from_row(row)
    response = latest_response(conn, task_id)
    payload = {
        "task": serialize.task_dict(view),
        "response": serialize.attempt_dict(response, True) if response else None,
    }
    new = NewTask(
        url=view.callback or "",
        body=serialize.dumps(payload),
        content_type="application/json",
        timeout=view.timeout,
        max_retries=view.max_retries,
        backoff=view.backoff,
        callback_of=view.id,
    )
    created, _ = enqueue.insert_task(conn, new, row.app_id)
    return created.id


def _notice_owed() -> ColumnElement[bool]:
    """Whether cancelling the PENDING task owes its hook a DELETE notice, by its policy."""
    owed: ColumnElement[bool] = case(
        (tasks.c.notice_policy == "always", true()),
        (tasks.c.notice_policy == "started", tasks.c.retry_count > 0),
        else_=false(),
    )
    return owed


@dataclass(frozen=True)
class Cancelled:
    """A task just cancelled, whether its hook is owed a DELETE notice (see
    ``cancel_notice``), and the callback task the cancel created, if any."""

    task: TaskView
    notice_owed: bool
    callback_id: uuid.UUID | None


def cancel(db: Db, task_id: uuid.UUID, app_id: uuid.UUID | None) -> Cancelled | None:
    """PENDING -> CANCELLED; the running attempt, if any, can no longer finish it (its
    identity is replaced by the notice's). A task with a ``callback`` gets its callback
    task, in the same transaction (the caller's). None if the task was not PENDING.
    """
    stmt = (
        update(tasks)
        .where(
            tasks.c.id == task_id,
            tasks.c.app_id.is_not_distinct_from(app_id),
            tasks.c.status == Status.PENDING,
            VISIBLE,
        )
        .values(
            status=Status.CANCELLED,
            modified=func.now(),
            due=func.now(),
            notice_owed=_notice_owed(),
            attempt_id=func.gen_random_uuid(),
            last_error="cancelled",
        )
        .returning(*VIEW_COLUMNS, tasks.c.notice_owed)
    )
    row = db.execute(stmt).first()
    if row is None:
        return None
    callback_id = _add_callback(db, task_id) if row.callback else None
    return Cancelled(TaskView.from_row(row), row.notice_owed, callback_id)


def replay(db: Db, task_id: uuid.UUID, app_id: uuid.UUID | None) -> TaskView | None:
    """FAILED or CANCELLED -> PENDING, due now, with a fresh retry budget; the attempt
    history is kept. No attempt holds the task until the next acquire."""
    stmt = (
        update(tasks)
        .where(
            tasks.c.id == task_id,
            tasks.c.app_id.is_not_distinct_from(app_id),
            tasks.c.status.in_([Status.FAILED, Status.CANCELLED]),
            VISIBLE,
        )
        .values(
            status=Status.PENDING,
            due=func.now(),
            retry_count=0,
            modified=func.now(),
            last_error=None,
            notice_owed=False,
            attempt_id=None,
            first_due=None,
        )
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
    pending = tasks.c.status == Status.PENDING
    # Lock the tasks first (in id order, as every bulk write here does), so that no worker
    # starts an attempt between choosing which tasks owe a notice and deleting the rest.
    db.execute(
        select(func.count()).select_from(
            select(tasks.c.id)
            .where(mine, VISIBLE)
            .order_by(tasks.c.id)
            .with_for_update()
            .subquery()
        )
    )
    kept = (
        db.execute(
            update(tasks)
            .where(mine, VISIBLE, or_(and_(pending, _notice_owed()), tasks.c.notice_owed))
            .values(
                status=Status.CANCELLED,
                deleted=True,
                notice_owed=True,
                idempotency_key=None,
                modified=func.now(),
                due=func.now(),
                last_error="deleted",
                attempt_id=case((pending, func.gen_random_uuid()), else_=tasks.c.attempt_id),
            )
            .returning(tasks.c.id)
        )
        .scalars()
        .all()
    )
    db.execute(delete(tasks).where(mine, tasks.c.notice_owed.is_(False)))
    return list(kept)


def forget_responses(db: Db, task_id: uuid.UUID) -> None:
    """Drop the stored response headers and bodies of the task's attempts."""
    db.execute(
        update(attempts).where(attempts.c.task_id == task_id).values(headers=None, body=None)
    )


Cursor = tuple[datetime, uuid.UUID]


def overdue(conn: Db, limit: int, after: Cursor | None = None) -> list[Cursor]:
    """``(due, id)`` of PENDING tasks whose due time has passed, oldest first.

    ``after`` continues a sweep where the previous batch ended. The partial index on
    ``(due, id) WHERE status = 'PENDING'`` serves both the filter and the order.
    """
    stmt = select(tasks.c.due, tasks.c.id).where(
        tasks.c.status == Status.PENDING, tasks.c.due <= func.now()
    )
    if after is not None:
        stmt = stmt.where(tuple_(tasks.c.due, tasks.c.id) > tuple_(*after))
    stmt = stmt.order_by(tasks.c.due, tasks.c.id).limit(limit)
    return [(row.due, row.id) for row in conn.execute(stmt)]


def overdue_notices(conn: Db, limit: int) -> list[uuid.UUID]:
    """Cancelled tasks whose DELETE notice is owed and due (a partial index serves it)."""
    stmt = (
        select(tasks.c.id)
        .where(tasks.c.notice_owed, tasks.c.due <= func.now())
        .order_by(tasks.c.due)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def cleanup(conn: Db, older_than_days: float, limit: int = 5000) -> int:
    """Delete up to ``limit`` finished tasks last modified more than the given days ago
    (never a PENDING one, nor one whose cancel notice is still owed)."""
    victims = (
        select(tasks.c.id)
        .where(
            tasks.c.status.in_(TERMINAL),
            tasks.c.notice_owed.is_(False),
            tasks.c.modified < func.now() - seconds(older_than_days * 86400),
        )
        .limit(limit)
    )
    result = conn.execute(delete(tasks).where(tasks.c.id.in_(victims.scalar_subquery())))
    return int(cast(CursorResult[Any], result).rowcount)
