"""Read-only queries behind the API: listings, attempts, stats."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, select

from ntq.records import TaskView
from ntq.store.db import Db
from ntq.store.models import (
    COMPLETED,
    FAILED,
    PENDING,
    STATUSES,
    VIEW_COLUMNS,
    VISIBLE,
    attempts,
    seconds,
    tasks,
)


@dataclass(frozen=True)
class TaskFilter:
    """What ``GET /tasks`` asks for; ``before`` is the pagination cursor (an id)."""

    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    before: uuid.UUID | None = None
    limit: int = 100


def list_tasks(db: Db, app_id: uuid.UUID | None, wanted: TaskFilter) -> list[TaskView]:
    """The application's tasks, newest first. Ids are time-ordered, so "ids below the
    cursor" stays correct while new tasks arrive."""
    stmt = select(*VIEW_COLUMNS).where(tasks.c.app_id.is_not_distinct_from(app_id), VISIBLE)
    if wanted.status:
        stmt = stmt.where(tasks.c.status == wanted.status)
    if wanted.created_after:
        stmt = stmt.where(tasks.c.created > wanted.created_after)
    if wanted.created_before:
        stmt = stmt.where(tasks.c.created < wanted.created_before)
    if wanted.before:
        stmt = stmt.where(tasks.c.id < wanted.before)
    stmt = stmt.order_by(tasks.c.id.desc()).limit(wanted.limit)
    return [TaskView.from_row(row) for row in db.execute(stmt)]


def attempts_of(db: Db, task_id: uuid.UUID) -> list[Row[Any]]:
    """Every attempt made for the task, oldest first."""
    stmt = select(attempts).where(attempts.c.task_id == task_id).order_by(attempts.c.id)
    return list(db.execute(stmt))


def stats(db: Db, app_id: uuid.UUID | None) -> dict[str, Any]:
    """Counts by status, backlog, oldest pending age, recent outcomes, delivery latency."""
    mine = and_(tasks.c.app_id.is_not_distinct_from(app_id), VISIBLE)
    counts = dict.fromkeys(STATUSES, 0)
    counts.update(
        {
            row.status: row.n
            for row in db.execute(
                select(tasks.c.status, func.count().label("n")).where(mine).group_by(tasks.c.status)
            )
        }
    )
    return {"counts": counts, **_pending(db, mine), **_recent(db, mine)}


def _pending(db: Db, mine: Any) -> dict[str, Any]:
    pending = and_(mine, tasks.c.status == PENDING)
    row = db.execute(
        select(
            func.count().filter(tasks.c.due <= func.now()).label("due_now"),
            func.extract("epoch", func.now() - func.min(tasks.c.created)).label("oldest"),
        ).where(pending)
    ).one()
    return {"due_now": row.due_now, "oldest_pending_age_seconds": float(row.oldest or 0)}


def _recent(db: Db, mine: Any) -> dict[str, Any]:
    """Outcomes in the last minute and hour; latency = from when the task became due
    (a delay is not latency) to its completion."""
    recent = and_(
        mine, tasks.c.status.in_([COMPLETED, FAILED]), tasks.c.modified > func.now() - seconds(3600)
    )
    minute = tasks.c.modified > func.now() - seconds(60)
    # Tasks finished before first_due existed have none: their creation is the best known.
    due = func.coalesce(tasks.c.first_due, tasks.c.created)
    latency = func.extract("epoch", tasks.c.modified - due)
    done = tasks.c.status == COMPLETED
    row = db.execute(
        select(
            func.count().filter(done, minute).label("completed_minute"),
            func.count().filter(tasks.c.status == FAILED, minute).label("failed_minute"),
            func.count().filter(done).label("completed_hour"),
            func.count().filter(tasks.c.status == FAILED).label("failed_hour"),
            func.avg(latency).filter(done).label("mean"),
            func.percentile_cont(0.99).within_group(latency).filter(done).label("p99"),
        ).where(recent)
    ).one()
    return {
        "completed_last_minute": row.completed_minute,
        "failed_last_minute": row.failed_minute,
        "completed_last_hour": row.completed_hour,
        "failed_last_hour": row.failed_hour,
        "delivery_latency_seconds": {"mean": _num(row.mean), "p99": _num(row.p99)},
    }


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def backlog_gauges(db: Db) -> dict[str, float]:
    """System-wide gauges for ``/metrics``."""
    row = db.execute(
        select(
            func.count().label("pending"),
            func.count().filter(tasks.c.due <= func.now()).label("due"),
        ).where(tasks.c.status == PENDING)
    ).one()
    return {"tasks_pending": row.pending, "tasks_due_now": row.due}
