"""The tables: applications, their API keys, tasks, the attempts made on them, and the
counters behind ``/metrics``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Uuid,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ntq.records import Status
from ntq.store.db import Base

PENDING, COMPLETED, FAILED, CANCELLED = (str(status) for status in Status)
STATUSES = (PENDING, COMPLETED, FAILED, CANCELLED)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BACKOFFS = ("exponential", "linear")
# When a cancelled task's hook is sent the DELETE notice: once an attempt has begun (the hook
# may have started work), always, or never.
NOTICE_POLICIES = ("started", "always", "never")

Timestamp = DateTime(timezone=True)


class App(Base):
    """An application: owns tasks, holds API keys and the secret that signs deliveries."""

    __tablename__ = "apps"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    signing_secret: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked: Mapped[datetime | None] = mapped_column(Timestamp)


class ApiKey(Base):
    """An API key, stored only as its SHA-256 digest (keys are 256 random bits)."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked: Mapped[datetime | None] = mapped_column(Timestamp)


class Task(Base):
    """A webhook call to make, at least once, and everything known about it."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"status IN {STATUSES!r}", name="status"),
        CheckConstraint(f"method IN {METHODS!r}", name="method"),
        CheckConstraint(f"backoff IN {BACKOFFS!r}", name="backoff"),
        CheckConstraint(f"notice_policy IN {NOTICE_POLICIES!r}", name="notice_policy"),
        # The requeue poller's query: PENDING tasks due now, oldest first. Partial, so
        # finished tasks (the vast majority at rest) cost it nothing.
        Index("ix_tasks_pending_due", "due", "id", postgresql_where=text("status = 'PENDING'")),
        # Listing an application's tasks newest first (ids are time-ordered UUIDv7).
        Index("ix_tasks_app_id_id", "app_id", "id"),
        # Cleanup of finished tasks by age.
        Index(
            "ix_tasks_finished_modified", "modified", postgresql_where=text("status <> 'PENDING'")
        ),
        Index("ix_tasks_notice_owed_due", "due", postgresql_where=text("notice_owed")),
        Index(
            "uq_tasks_app_id_idempotency_key",
            "app_id",
            "idempotency_key",
            unique=True,
            postgresql_nulls_not_distinct=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    app_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    url: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(8), default="POST")
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    body: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    content_type: Mapped[str | None] = mapped_column(Text)
    timeout: Mapped[int] = mapped_column(Integer)
    due: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    backoff: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    modified: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    callback: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # The identity of the task's current attempt, never reused: a delivery's, new at each
    # acquire, or the cancel notice's, new at the cancel (it is the notice's webhook-id).
    # Every write that ends an attempt is guarded by it; NULL while nothing is attempted.
    attempt_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The task's ``cancel_notice`` (one of NOTICE_POLICIES).
    notice_policy: Mapped[str] = mapped_column(String(16), server_default=text("'started'"))
    # A cancelled task whose hook is still owed its DELETE notice (sent by a worker when
    # ``due`` passes; the requeue poller finds these like PENDING tasks). Revision 0001
    # called it ``cancel_notice``: that column stays, kept equal to this one by a trigger,
    # until no running version uses it.
    notice_owed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Deleted by ``DELETE /`` but kept, out of sight, until its cancel notice is sent.
    deleted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # For a callback delivery: the task whose outcome it reports.
    callback_of: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # When the task first became due (its enqueue's delay or not_before passed, or its
    # replay), kept by its first acquire since later ones move ``due``: /stats measures
    # delivery latency from it, so a delay is not latency. Cleared by a replay.
    first_due: Mapped[datetime | None] = mapped_column(Timestamp)


class Attempt(Base):
    """One HTTP call made for a task: a delivery, or the DELETE sent on cancellation."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_task_id_id", "task_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(8))
    started: Mapped[datetime] = mapped_column(Timestamp)
    elapsed_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))


class Count(Base):
    """One counter of ``/metrics`` as one process added to it (or, for ``folded``, as
    processes that went quiet did); ``/metrics`` sums the rows by name."""

    __tablename__ = "counters"

    process: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    # Not indexed, so that each flush's update can stay a heap-only (HOT) update.
    updated: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


tasks = cast(Table, Task.__table__)
apps = cast(Table, App.__table__)
api_keys = cast(Table, ApiKey.__table__)
attempts = cast(Table, Attempt.__table__)
counters = cast(Table, Count.__table__)

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
