"""Housekeeping that needs a worker (issue 3, SPEC §3): ``DELETE /`` (the caller's tasks
only, in-flight attempts interrupted) and ``POST /tasks/{id}/retry``. Listing and its
cursor are tested in process: ``tests/integration/api/test_listing.py``."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine

from ntq.store.apps import Credentials
from tests.conftest import app_api, module_stack
from tests.support.hook import HookServer
from tests.support.procs import Api, Stack
from tests.support.tasks import TERMINAL, count_tasks, enqueue, new_app, wait_until

stack = module_stack()  # one web and one worker for the module
api = app_api  # each test has applications of its own


def listing(api: Api, **params: Any) -> dict[str, Any]:
    response = api.get("/tasks", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def ids(page: dict[str, Any]) -> list[str]:
    return [t["id"] for t in page["tasks"]]


def test_delete_all_removes_only_the_callers_tasks_and_interrupts_attempts(
    app: tuple[Api, Credentials], stack: Stack, engine: Engine, hook: HookServer
) -> None:
    """The tasks go at once; the hooks owed a cancel notice (an attempt had begun, or the
    task asked for one always) still get it, and only they."""
    api, creds = app
    other, other_creds = new_app(stack, engine, "other")
    try:
        running = enqueue(api, hook.script("/running", {"sleep": 5}, {"status": 200}))
        for _ in range(3):
            enqueue(api, hook.script("/mine"), delay=60)
        always = enqueue(api, hook.script("/always"), delay=60, cancel_notice="always")
        theirs = [enqueue(other, hook.script("/theirs"), delay=60) for _ in range(2)]
        hook.wait_for(1, "/running")
        assert api.task(running)["status"] == "PENDING"

        deleted_at = time.monotonic()
        response = api.delete("/")
        assert response.status_code == 204, response.text

        assert listing(api)["tasks"] == []
        assert api.get(f"/tasks/{running}").status_code == 404
        assert api.get(f"/tasks/{always}").status_code == 404
        assert sum(api.get("/stats").json()["counts"].values()) == 0
        assert count_tasks(engine, creds.app_id, "PENDING") == 0
        assert count_tasks(engine, other_creds.app_id) == 2
        assert sorted(ids(listing(other))) == sorted(theirs)

        while "/running" not in hook.dropped:
            assert time.monotonic() - deleted_at < 3, "the in-flight attempt ran on"
            time.sleep(0.02)
        for path, task_id in (("/running", running), ("/always", always)):
            (notice,) = hook.wait_for(1, path, method="DELETE", timeout=10)
            assert notice.headers["NTQ-Task-Id"] == task_id
            assert notice.headers["webhook-id"] != task_id
        assert wait_until(lambda: count_tasks(engine, creds.app_id) == 0, 5), (
            "the deleted tasks stayed after their notices"
        )
        assert len(hook.requests("/running", method="POST")) == 1
        assert hook.requests("/mine") == [], "a hook that had not started got a notice"
        assert listing(api)["tasks"] == []
        assert other.delete("/").status_code == 204
        assert count_tasks(engine, other_creds.app_id) == 0
    finally:
        other.http.close()


def test_retry_replays_failed_and_cancelled_tasks_keeping_history(
    api: Api, hook: HookServer
) -> None:
    failed = enqueue(api, hook.script("/f", {"status": 404}, {"status": 200}))
    assert api.wait_status(failed, *TERMINAL)["status"] == "FAILED"

    response = api.post(f"/tasks/{failed}/retry")
    assert response.status_code == 200, response.text
    replayed = response.json()
    assert replayed["id"] == failed
    assert replayed["status"] == "PENDING"
    assert replayed["retry_count"] == 0
    task = api.wait_status(failed, *TERMINAL)
    assert (task["status"], task["last_status_code"]) == ("COMPLETED", 200)
    history = api.get(f"/tasks/{failed}/attempts").json()["attempts"]
    assert [(a["status_code"], a["outcome"]) for a in history] == [(404, "fail"), (200, "complete")]
    assert len(hook.requests("/f", method="POST")) == 2

    cancelled = enqueue(api, hook.script("/c"), delay=60, cancel_notice="always")
    assert api.delete(f"/tasks/{cancelled}").status_code == 204
    hook.wait_for(1, "/c", method="DELETE", timeout=10)
    deadline = time.monotonic() + 5
    while not api.get(f"/tasks/{cancelled}/attempts").json()["attempts"]:
        assert time.monotonic() < deadline, "the cancel notice was not recorded"
        time.sleep(0.05)
    response = api.post(f"/tasks/{cancelled}/retry")
    assert response.status_code == 200, response.text
    assert api.wait_status(cancelled, *TERMINAL)["status"] == "COMPLETED"
    assert len(hook.requests("/c", method="POST")) == 1
    history = api.get(f"/tasks/{cancelled}/attempts").json()["attempts"]
    assert [a["outcome"] for a in history] == ["cancel_notice", "complete"]

    pending = enqueue(api, hook.script("/p"), delay=60)
    for task_id, status in ((pending, "PENDING"), (failed, "COMPLETED")):
        response = api.post(f"/tasks/{task_id}/retry")
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"]
        assert api.task(task_id)["status"] == status
    assert api.post("/tasks/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/retry").status_code == 404
