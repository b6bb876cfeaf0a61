"""Structured and batch enqueue (issue 3, SPEC §3 ``POST /tasks``): one JSON task or an
array of up to 1,000 in one transaction, all or nothing, a bad item named by its index."""

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


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"]
    assert error["message"]
    return error


def test_a_batch_with_one_invalid_item_stores_nothing_and_names_it(
        app: tuple[Api, Credentials], engine: Engine, hook: HookServer) -> None:
    api, creds = app
    url = hook.script("/b")
    batch: list[dict[str, Any]] = [{"url": url, "json": {"i": i}} for i in range(1000)]

    for index, bad in ((613, {"url": "ftp://example.com/x"}), (999, {"timeout": 0}),
                       (0, {"method": "FETCH"}), (5, {"colour": "blue"})):
        items = [*batch[:index], {**batch[index], **bad}, *batch[index + 1:]]
        error = error_of(api.post("/tasks", json=items), 400)
        assert error.get("index") == index, error
        assert str(index) in error["message"]
        assert count_tasks(engine, creds.app_id) == 0, f"a batch bad at {index} stored tasks"

    too_many = error_of(api.post("/tasks", json=[*batch, batch[0]]), 413)
    assert too_many["code"]
    assert count_tasks(engine, creds.app_id) == 0
    time.sleep(0.5)
    assert hook.requests() == []


def test_a_valid_batch_of_1000_is_stored_and_delivered(
        app: tuple[Api, Credentials], engine: Engine, hook: HookServer) -> None:
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


def test_single_tasks_and_body_forms(app: tuple[Api, Credentials], engine: Engine,
                                     hook: HookServer) -> None:
    api, creds = app
    items = {
        "/json": {"json": {"a": [1, "ü"]}},
        "/text": {"body": "plain ✓", "method": "PUT"},
        "/b64": {"body_base64": base64.b64encode(b"\x00\xff\xfe").decode(),
                 "content_type": "application/octet-stream"},
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

    stored = count_tasks(engine, creds.app_id)
    url = hook.url + "/never"
    assert error_of(api.post("/tasks", json={"url": url, "colour": "blue"}),
                    400)["code"] == "unknown_field"
    error_of(api.post("/tasks", data=json.dumps({"url": url}),
                      headers={"Content-Type": "text/plain"}), 415)
    error_of(api.post("/tasks", data=json.dumps({"url": url})), 415)
    error_of(api.post("/tasks", data=b"{not json",
                      headers={"Content-Type": "application/json"}), 400)
    error_of(api.post("/tasks", json=[]), 400)
    error_of(api.post("/tasks", json="a string"), 400)
    error_of(api.post("/tasks", json={"url": url, "body": "a", "json": 1}), 400)
    error_of(api.post("/tasks", json={"url": url, "body_base64": "%%%"}), 400)
    error_of(api.post("/tasks", json={"method": "POST"}), 400)
    assert count_tasks(engine, creds.app_id) == stored
    assert hook.requests("/never") == []
