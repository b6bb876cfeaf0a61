"""Structured and batch enqueue (issue 3, SPEC §3 ``POST /tasks``), delivered by a real
worker: a batch of 1,000 arrives whole, each once, and every body form arrives as sent.
What the structured form refuses is tested in process:
``tests/integration/api/test_batch.py``."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from sqlalchemy import Engine

from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.hook import HookServer
from tests.support.procs import Api
from tests.support.tasks import count_tasks

stack = module_stack()  # one web and one worker for the module; each test has an app of its own


def test_a_valid_batch_of_1000_is_stored_and_delivered(
    app: tuple[Api, Credentials], engine: Engine, hook: HookServer
) -> None:
    api, creds = app
    hook.script("/b")
    batch = [{"url": f"{hook.url}/b?i={i}", "json": {"i": i}} for i in range(1000)]
    response = api.post("/tasks", json=batch, timeout=60)
    assert response.status_code == 201, response.text[:500]
    tasks = response.json()["tasks"]
    assert len(tasks) == 1000
    assert [t["url"] for t in tasks] == [item["url"] for item in batch], "order not kept"
    assert len({t["id"] for t in tasks}) == 1000
    assert count_tasks(engine, creds.app_id) == 1000

    received = hook.wait_for(1000, "/b", timeout=60)
    assert len(received) == 1000
    assert sorted(json.loads(r.body)["i"] for r in received) == list(range(1000))
    deadline = time.monotonic() + 30
    while count_tasks(engine, creds.app_id, "COMPLETED") < 1000:
        assert time.monotonic() < deadline, "not every task of the batch completed"
        time.sleep(0.1)
    time.sleep(0.5)
    assert len(hook.requests("/b")) == 1000, "some tasks were delivered twice"


def test_single_tasks_and_body_forms(app: tuple[Api, Credentials], hook: HookServer) -> None:
    api, _ = app
    items: dict[str, dict[str, Any]] = {
        "/json": {"json": {"a": [1, "ü"]}},
        "/text": {"body": "plain ✓", "method": "PUT"},
        "/b64": {
            "body_base64": base64.b64encode(b"\x00\xff\xfe").decode(),
            "content_type": "application/octet-stream",
        },
        "/headers": {"headers": {"X-Trace": "t-1"}, "max_retries": 3, "timeout": 5},
    }
    for path, extra in items.items():
        response = api.post("/tasks", json={"url": hook.script(path), **extra})
        assert response.status_code == 201, response.text
        task = response.json()
        assert "tasks" not in task
        assert response.headers["Location"].endswith(f"/tasks/{task['id']}")
        assert api.http.get(response.headers["Location"], timeout=10).json()["id"] == task["id"]

    (json_call,) = hook.wait_for(1, "/json")
    assert json.loads(json_call.body) == {"a": [1, "ü"]}
    assert json_call.headers["Content-Type"].startswith("application/json")
    (text_call,) = hook.wait_for(1, "/text")
    assert (text_call.method, text_call.body) == ("PUT", "plain ✓".encode())
    (b64_call,) = hook.wait_for(1, "/b64")
    assert b64_call.body == b"\x00\xff\xfe"
    assert b64_call.headers["Content-Type"] == "application/octet-stream"
    (header_call,) = hook.wait_for(1, "/headers")
    assert header_call.headers["X-Trace"] == "t-1"
    assert header_call.headers["NTQ-Task-Retry-Limit"] == "3"
