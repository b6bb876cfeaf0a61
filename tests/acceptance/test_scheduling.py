"""Scheduling and policy per task (issue 3, SPEC §3-4): ``delay`` / ``not_before``,
per-task ``max_retries`` and ``backoff``, and ``Idempotency-Key`` under concurrent
duplicates.

The stack runs with NTQ_MIN_DUE_DELAY=0.2 and NTQ_MAX_DUE_DELAY=5 (see ``stack_env``).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import requests
from sqlalchemy import Engine, text

from ntq.store.apps import Credentials
from tests.conftest import app_api, module_stack
from tests.support.hook import HookServer, gaps
from tests.support.procs import Api, Stack
from tests.support.tasks import TERMINAL, enqueue, new_app

stack = module_stack()  # one web and one worker for the module
api = app_api  # each test has applications of its own


def test_delayed_tasks_are_not_attempted_early_and_then_promptly(
    api: Api, hook: HookServer
) -> None:
    sent = time.time()
    target = round(sent + 3, 3)  # exact in both forms below
    iso = datetime.fromtimestamp(target, UTC).isoformat().replace("+00:00", "Z")
    enqueue(api, hook.script("/delay"), delay=3)
    enqueue(api, hook.script("/iso"), not_before=iso)
    enqueue(api, hook.script("/epoch"), not_before=f"{target:.3f}")
    when = {"/delay": sent + 3, "/iso": target, "/epoch": target}
    time.sleep(1.5)
    assert hook.requests() == [], "a delayed task was attempted early"

    for path, due in when.items():
        (received,) = hook.wait_for(1, path, timeout=10)
        assert received.at >= due, f"{path} reached the hook {due - received.at:.3f} s early"
        assert received.at <= due + 3, f"{path} reached the hook {received.at - due:.2f} s late"


def test_not_before_in_the_past_is_due_at_once(api: Api, hook: HookServer) -> None:
    sent = time.time()
    enqueue(api, hook.script("/past"), not_before=f"{sent - 3600:.0f}")
    (received,) = hook.wait_for(1, "/past", timeout=10)
    assert received.at - sent < 3
    for bad in (
        {"delay": "-1"},
        {"delay": "soon"},
        {"not_before": "tomorrow"},
        {"delay": "1", "not_before": f"{sent:.0f}"},
    ):
        response = api.enqueue(hook.url + "/bad", b"", headers=None, **bad)
        assert response.status_code == 400, (bad, response.text)


def test_per_task_max_retries(api: Api, hook: HookServer) -> None:
    twice = enqueue(api, hook.script("/twice", {"status": 500}), max_retries=2)
    never = enqueue(api, hook.script("/never", {"status": 503}), max_retries=0)
    assert api.task(twice)["max_retries"] == 2

    for task_id, path, count in ((twice, "/twice", 3), (never, "/never", 1)):
        task = api.wait_status(task_id, *TERMINAL, timeout=20)
        assert task["status"] == "FAILED", task
        assert task["retry_count"] == count
        assert str(task["last_status_code"]) in (task["last_error"] or ""), task
        time.sleep(0.8)  # several backoff delays: a wrong extra attempt would show
        received = hook.requests(path)
        assert len(received) == count, f"{path}: {len(received)} attempts"
        assert {r.headers["NTQ-Task-Retry-Limit"] for r in received} == {str(count - 1)}


def test_per_task_backoff_linear_and_exponential(api: Api, hook: HookServer) -> None:
    """min delay 0.2 s: linear waits 0.2, 0.4, 0.6, 0.8 s; exponential 0.2, 0.4, 0.8,
    1.6 s (each +/- 10 %)."""
    linear = enqueue(api, hook.script("/linear", {"status": 500}), max_retries=4, backoff="linear")
    exponential = enqueue(
        api, hook.script("/exp", {"status": 500}), max_retries=4, backoff="exponential"
    )
    assert api.task(linear)["backoff"] == "linear"
    for task_id in (linear, exponential):
        assert api.wait_status(task_id, *TERMINAL, timeout=20)["status"] == "FAILED"

    lin = gaps(hook.requests("/linear"))
    exp = gaps(hook.requests("/exp"))
    assert len(lin) == len(exp) == 4
    for gap, base in zip(lin, (0.2, 0.4, 0.6, 0.8), strict=True):
        assert gap >= base * 0.9 - 0.01, lin
    assert lin[3] < 1.25, f"linear backoff waited {lin[3]:.2f} s before attempt 5: {lin}"
    assert exp[3] >= 1.6 * 0.9 - 0.01, f"exponential: {exp}"
    response = api.enqueue(hook.url + "/bad", b"", backoff="random")
    assert response.status_code == 400


def test_concurrent_duplicates_with_one_idempotency_key_make_one_task(
    app: tuple[Api, Credentials], stack: Stack, engine: Engine, hook: HookServer
) -> None:
    api, creds = app
    url = hook.script("/once")
    key = f"order-{uuid.uuid4()}"
    barrier = threading.Barrier(50)
    results: list[requests.Response] = []

    def post() -> None:
        barrier.wait()
        results.append(
            requests.post(
                f"{stack.url}/",
                params={"url": url},
                data=b"x",
                timeout=30,
                headers={
                    "Authorization": f"Bearer {creds.api_key}",
                    "Idempotency-Key": key,
                    "Content-Type": "text/plain",
                },
            )
        )

    threads = [threading.Thread(target=post) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 49 + [201], codes
    assert len({r.headers["Location"] for r in results}) == 1
    assert len({r.json()["id"] for r in results}) == 1
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*) FROM tasks WHERE idempotency_key = :k"), {"k": key}
        ).scalar_one()
    assert rows == 1
    hook.wait_for(1, "/once")
    time.sleep(0.8)
    assert len(hook.requests("/once")) == 1, "the duplicates were delivered"

    # The structured form honours the same key; another application has its own keys.
    same = api.post("/tasks", json={"url": url, "idempotency_key": key})
    assert same.status_code == 200, same.text
    assert same.headers["Location"] == results[0].headers["Location"]
    other, _ = new_app(stack, engine, "other")
    try:
        theirs = other.enqueue(url, b"x", headers={"Idempotency-Key": key})
        assert theirs.status_code == 201, theirs.text
        assert theirs.json()["id"] != results[0].json()["id"]
    finally:
        other.http.close()
    fresh = api.enqueue(url, b"x", headers={"Idempotency-Key": key + "-2"})
    assert fresh.status_code == 201
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*) FROM tasks WHERE idempotency_key = :k"), {"k": key}
        ).scalar_one()
    assert rows == 2
