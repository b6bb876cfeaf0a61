"""Tasks and attempts as JSON-ready dicts, shared by the API and callback payloads."""

from __future__ import annotations

import base64
from dataclasses import fields
from typing import Any

import orjson

from ntq.records import TaskView

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
TASK_FIELDS = tuple(f.name for f in fields(TaskView) if f.name != "app_id")


def dumps(data: Any) -> bytes:
    """JSON bytes; datetimes in UTC ISO 8601 with ``Z``, UUIDs as strings."""
    return orjson.dumps(data, option=JSON_OPTIONS)


def task_dict(task: TaskView) -> dict[str, Any]:
    """The task's fields (nTorque's ``id, status, url, due, retry_count, timeout``
    included), with ``attempts`` as an alias of ``retry_count``."""
    data = {name: getattr(task, name) for name in TASK_FIELDS}  # asdict deep-copies: slow
    data["id"] = str(task.id)
    data["callback_of"] = str(task.callback_of) if task.callback_of else None
    data["attempts"] = task.retry_count
    return data


def body_fields(body: bytes | None) -> dict[str, Any]:
    """``body`` as text when it is UTF-8, else ``body_base64``."""
    if body is None:
        return {"body": None}
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}


def attempt_dict(row: Any, with_body: bool) -> dict[str, Any]:
    """One attempt; the stored response body only when asked for."""
    data = {
        "attempt": row.number,
        "method": row.method,
        "started": row.started,
        "elapsed_ms": row.elapsed_ms,
        "status_code": row.status_code,
        "reason": row.reason,
        "headers": row.headers,
        "truncated": row.truncated,
        "error": row.error,
        "outcome": row.outcome,
    }
    if with_body:
        data.update(body_fields(row.body))
    return data
