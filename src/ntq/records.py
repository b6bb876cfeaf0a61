"""Frozen value objects that cross module boundaries instead of live ORM rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A task's state. PENDING tasks are waiting or being attempted; the others are final."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class Outcome(StrEnum):
    """How one attempt ended, as recorded on the attempt and counted in ``/metrics``:
    what the verdict decided, or ``stale`` when a newer state had replaced the attempt's,
    or ``cancel_notice`` for the DELETE sent to a cancelled task's hook."""

    COMPLETE = "complete"
    RETRY = "retry"
    FAIL = "fail"
    INTERRUPTED = "interrupted"
    STALE = "stale"
    CANCEL_NOTICE = "cancel_notice"


@dataclass(frozen=True)
class NewTask:
    """A validated request to create a task (times are relative to the database clock)."""

    url: str
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None
    timeout: int = 60
    delay: float = 0.0
    not_before: datetime | None = None
    max_retries: int = 36
    backoff: str = "exponential"
    callback: str | None = None
    idempotency_key: str | None = None
    callback_of: uuid.UUID | None = None
    cancel_notice: str = "started"


@dataclass(frozen=True)
class TaskView:
    """A task as clients see it (no body: it may be large and binary)."""

    id: uuid.UUID
    app_id: uuid.UUID | None
    status: str
    url: str
    method: str
    headers: dict[str, str]
    content_type: str | None
    timeout: int
    due: datetime
    retry_count: int
    max_retries: int
    backoff: str
    created: datetime
    modified: datetime
    last_status_code: int | None
    last_error: str | None
    callback: str | None
    idempotency_key: str | None
    callback_of: uuid.UUID | None
    cancel_notice: str
    body_size: int

    @classmethod
    def from_row(cls, row: Any) -> TaskView:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Acquired:
    """A task a worker holds for one attempt: ``attempt_id`` is this attempt's identity
    (for a cancel notice, the notice's), ``retry_count`` its number."""

    id: uuid.UUID
    attempt_id: uuid.UUID
    app_id: uuid.UUID | None
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    content_type: str | None
    timeout: int
    retry_count: int
    max_retries: int
    backoff: str
    callback: str | None
    status: str
    secret: str | None

    @property
    def is_cancel_notice(self) -> bool:
        """True when this is not a delivery but the DELETE owed to a cancelled task."""
        return self.status != Status.PENDING

    @classmethod
    def from_row(cls, row: Any) -> Acquired:
        values = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        values["body"] = bytes(values["body"] or b"")
        return cls(**values)


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP call produced."""

    method: str
    started: datetime
    elapsed_ms: int
    status_code: int | None = None
    reason: str | None = None
    headers: dict[str, str] | None = None
    body: bytes | None = None
    truncated: bool = False
    error: str | None = None
    retry_after: float | None = None
    # The request can never succeed (refused address, invalid URL, redirect loop).
    permanent: bool = False


@dataclass(frozen=True)
class Verdict:
    """What to do with a task after an attempt: complete, retry (after ``delay``) or fail."""

    decision: Outcome  # COMPLETE, RETRY, FAIL or INTERRUPTED
    error: str | None = None
    delay: float | None = None
