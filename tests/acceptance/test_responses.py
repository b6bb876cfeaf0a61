"""Stored responses and attempts (issue 3, SPEC §3): ``GET /tasks/{id}/response`` with
``?wait=N`` long-polling, ``DELETE /tasks/{id}/response``, ``GET /tasks/{id}/attempts`` and
the ``Link`` headers between a task and its resources, for responses a real worker stored.
Before any attempt (a 404, with or without ``?wait``) is tested in process:
``tests/integration/api/test_responses.py``."""

from __future__ import annotations

import base64
import time

import requests

from tests.conftest import app_api, module_stack
from tests.support.hook import HookServer
from tests.support.procs import Api
from tests.support.tasks import TERMINAL, enqueue

BINARY = bytes(range(256)) * 4 + b"\xff\xfe\x00"

stack = module_stack()  # one web and one worker for the module
api = app_api  # each test has an application of its own


def links(response: requests.Response) -> dict[str, str]:
    """rel -> url from the ``Link`` header."""
    assert "Link" in response.headers, f"no Link header on {response.url}"
    return {rel: link["url"] for rel, link in response.links.items()}


def test_wait_returns_as_soon_as_the_task_completes_with_the_hooks_body(
    api: Api, hook: HookServer
) -> None:
    url = hook.script(
        "/slow", {"sleep": 1, "status": 201, "body": "answer: 42 ✓", "headers": {"X-Reply": "yes"}}
    )
    task_id = enqueue(api, url)

    started = time.monotonic()
    response = api.get(f"/tasks/{task_id}/response", params={"wait": 5}, timeout=15)
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert took >= 0.9, "returned before the hook had answered"
    assert took < 3.0, f"?wait=5 took {took:.2f} s for a hook answering after ~1 s"

    data = response.json()
    assert data["status_code"] == 201
    assert data["body"] == "answer: 42 ✓"
    assert "body_base64" not in data
    assert data["headers"]["X-Reply"] == "yes"
    assert data["reason"] == "Created"
    assert data["attempt"] == 1
    assert data["truncated"] is False
    assert data["elapsed_ms"] >= 900
    assert data["task_status"] == "COMPLETED"
    assert set(links(response)) >= {"self", "response", "attempts"}

    # Already finished: answers at once.
    started = time.monotonic()
    again = api.get(f"/tasks/{task_id}/response", params={"wait": 5}, timeout=15)
    assert again.status_code == 200
    assert time.monotonic() - started < 1.0
    assert again.json()["body"] == "answer: 42 ✓"


def test_binary_bodies_come_back_as_base64_and_large_ones_truncated(
    api: Api, hook: HookServer
) -> None:
    binary = enqueue(api, hook.script("/bin", {"body": BINARY}))
    large = enqueue(api, hook.script("/large", {"body": b"x" * 70000}))
    for task_id in (binary, large):
        assert api.wait_status(task_id, *TERMINAL)["status"] == "COMPLETED"

    data = api.get(f"/tasks/{binary}/response").json()
    assert base64.b64decode(data["body_base64"]) == BINARY
    assert data.get("body") is None
    assert data["truncated"] is False

    data = api.get(f"/tasks/{large}/response").json()
    assert data["truncated"] is True
    assert data["body"] == "x" * 65536  # NTQ_MAX_RESPONSE_BYTES default


def test_attempts_are_listed_oldest_first_and_linked(api: Api, hook: HookServer) -> None:
    url = hook.script(
        "/flaky",
        {"status": 500, "body": "first"},
        {"status": 503, "body": "second"},
        {"status": 200, "body": "third"},
    )
    task_id = enqueue(api, url)
    assert api.wait_status(task_id, *TERMINAL)["status"] == "COMPLETED"

    response = api.get(f"/tasks/{task_id}/attempts")
    assert response.status_code == 200
    history = response.json()["attempts"]
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert [a["status_code"] for a in history] == [500, 503, 200]
    assert [a["outcome"] for a in history] == ["retry", "retry", "complete"]
    assert [a["method"] for a in history] == ["POST"] * 3
    starts = [a["started"] for a in history]
    assert starts == sorted(starts)
    assert all(s.endswith("Z") for s in starts)
    assert all(isinstance(a["elapsed_ms"], int) for a in history)
    assert set(links(response)) >= {"self", "response", "attempts"}

    latest = api.get(f"/tasks/{task_id}/response").json()
    assert (latest["attempt"], latest["status_code"], latest["body"]) == (3, 200, "third")

    task = api.get(f"/tasks/{task_id}")
    rels = links(task)
    assert rels["self"].endswith(f"/tasks/{task_id}")
    assert rels["response"].endswith(f"/tasks/{task_id}/response")
    assert rels["attempts"].endswith(f"/tasks/{task_id}/attempts")
    assert api.http.get(rels["attempts"], timeout=10).json()["attempts"] == history


def test_forgetting_responses(api: Api, hook: HookServer) -> None:
    task_id = enqueue(
        api,
        hook.script(
            "/secret", {"status": 500, "body": "token=abc"}, {"status": 200, "body": "token=xyz"}
        ),
    )
    assert api.wait_status(task_id, *TERMINAL)["status"] == "COMPLETED"
    assert api.get(f"/tasks/{task_id}/response").json()["body"] == "token=xyz"

    response = api.delete(f"/tasks/{task_id}/response")
    assert response.status_code == 204
    assert response.content == b""

    after = api.get(f"/tasks/{task_id}/response")
    if after.status_code == 200:  # the attempt itself may stay, without what it carried
        data = after.json()
        assert data.get("body") is None
        assert data.get("body_base64") is None
        assert not data.get("headers")
    else:
        assert after.status_code == 404
    history = api.get(f"/tasks/{task_id}/attempts").json()["attempts"]
    assert [a["status_code"] for a in history] == [500, 200], "the history itself is kept"
    assert all(not a.get("headers") for a in history)
    assert "token=" not in api.get(f"/tasks/{task_id}/attempts").text
    assert api.task(task_id)["status"] == "COMPLETED"
