"""Callbacks (issue 3, SPEC §4): when a task with ``callback`` reaches a terminal state,
ntq POSTs ``{"task", "response"}`` JSON to it once, signed like any delivery, and retries
it when the callback server fails."""

from __future__ import annotations

import json
import time
from typing import Any

from ntq import signing
from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.hook import HookServer, Received
from tests.support.procs import Api
from tests.support.tasks import TERMINAL, enqueue

stack = module_stack()  # one web and one worker for the module; each test has an app of its own


def payload(received: Received, secret: str) -> dict[str, Any]:
    """The callback's JSON, after checking it is JSON and signed with the app's secret."""
    assert received.method == "POST"
    assert received.headers["Content-Type"].startswith("application/json")
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert "webhook-signature" in headers, "the callback is not signed"
    expected = signing.signature(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), received.body
    )
    assert expected in headers["webhook-signature"].split(" ")
    data: dict[str, Any] = json.loads(received.body)
    assert set(data) == {"task", "response"}
    return data


def test_callback_gets_each_terminal_state_exactly_once(
    app: tuple[Api, Credentials], hook: HookServer
) -> None:
    api, creds = app
    completed = enqueue(
        api,
        hook.script("/flaky", {"status": 500}, {"status": 200, "body": "result"}),
        callback=hook.script("/cb-completed"),
    )
    failed = enqueue(
        api,
        hook.script("/gone", {"status": 410, "body": "no such job"}),
        callback=hook.script("/cb-failed"),
    )
    cancelled = enqueue(api, hook.script("/later"), delay=60, callback=hook.script("/cb-cancelled"))
    assert api.delete(f"/tasks/{cancelled}").status_code == 204

    for task_id in (completed, failed, cancelled):
        api.wait_status(task_id, *TERMINAL)
    calls = {
        path: hook.wait_for(1, path, timeout=10)
        for path in ("/cb-completed", "/cb-failed", "/cb-cancelled")
    }
    time.sleep(1.0)  # a second callback (e.g. for the intermediate 500) would show by now

    for path in calls:
        assert len(hook.requests(path)) == 1, f"{path} was called more than once"

    data = payload(calls["/cb-completed"][0], creds.signing_secret)
    assert data["task"]["id"] == completed
    assert data["task"]["status"] == "COMPLETED"
    assert data["task"]["retry_count"] == 2
    assert data["response"]["status_code"] == 200
    assert data["response"]["body"] == "result"
    assert data["response"]["attempt"] == 2

    data = payload(calls["/cb-failed"][0], creds.signing_secret)
    assert (data["task"]["id"], data["task"]["status"]) == (failed, "FAILED")
    assert data["response"]["status_code"] == 410
    assert data["response"]["body"] == "no such job"

    data = payload(calls["/cb-cancelled"][0], creds.signing_secret)
    assert (data["task"]["id"], data["task"]["status"]) == (cancelled, "CANCELLED")
    assert data["response"] is None
    assert hook.requests("/later", method="POST") == []


def test_a_failing_callback_is_retried(app: tuple[Api, Credentials], hook: HookServer) -> None:
    api, creds = app
    callback = hook.script("/cb", {"status": 500}, {"status": 200})
    task_id = enqueue(api, hook.script("/ok", {"body": "fine"}), callback=callback)
    assert api.wait_status(task_id, *TERMINAL)["status"] == "COMPLETED"

    first, second = hook.wait_for(2, "/cb", timeout=10)
    time.sleep(1.0)
    assert len(hook.requests("/cb")) == 2, "the callback was not retried exactly once"
    assert second.at - first.at >= 0.15, "retried without backoff"
    assert first.body == second.body
    data = payload(second, creds.signing_secret)
    assert (data["task"]["id"], data["task"]["status"]) == (task_id, "COMPLETED")
    assert data["response"]["body"] == "fine"
    assert len(hook.requests("/ok")) == 1
    assert api.task(task_id)["status"] == "COMPLETED"
