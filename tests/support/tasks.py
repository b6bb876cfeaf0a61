"""Small helpers the acceptance tests share: create an application, enqueue a task, wait
for it, read its attempts, count what the database holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.support.procs import Api, Stack

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def enqueue(api: Api, url: str, body: bytes = b"payload", **params: Any) -> str:
    """A ``text/plain`` task through ``POST /`` (asserting the 201); its id."""
    response = api.enqueue(url, body, "text/plain", **params)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["id"]
    return task_id


def finished(api: Api, task_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    """The task once it is in one of ``statuses`` (default: any terminal one), asserting that
    it got there within ``timeout`` seconds."""
    wanted = statuses or TERMINAL
    task = api.wait_status(task_id, *wanted, timeout=timeout)
    assert task["status"] in wanted, f"still {task['status']} after {timeout} s: {task}"
    return task


def attempts(api: Api, task_id: str) -> list[dict[str, Any]]:
    """``GET /tasks/{id}/attempts``, oldest first."""
    response = api.get(f"/tasks/{task_id}/attempts")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["attempts"]
    return found


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; whether it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def eventually(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true, failing with ``what`` after ``timeout`` seconds; when it
    became true (``time.time()``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)
    return time.time()


def count_tasks(engine: Engine, app_id: uuid.UUID, status: str | None = None) -> int:
    """How many tasks the application has in the database (in ``status``, if given)."""
    query = "SELECT count(*) FROM tasks WHERE app_id = :a"
    if status:
        query += " AND status = :s"
    with engine.connect() as conn:
        return int(conn.execute(text(query), {"a": app_id, "s": status}).scalar_one())


def statuses(engine: Engine) -> dict[str, Any]:
    """status -> number of tasks, over every application."""
    with engine.begin() as conn:
        return dict(
            conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status")).tuples().all()
        )


def new_app(stack: Stack, engine: Engine, name: str) -> tuple[Api, Credentials]:
    """A new application, ``name`` plus a random suffix, and a client of ``stack``
    authenticated as it (the caller closes its ``http`` session)."""
    with engine.begin() as conn:
        creds = apps.create(conn, f"{name}-{uuid.uuid4().hex[:8]}")
    return Api(stack.url, creds.api_key), creds
