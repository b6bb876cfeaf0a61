"""At least once through a crash, exactly once without one (SPEC §1).

A worker killed mid-delivery leaves its task leased until ``timeout + grace`` has passed;
then the requeue poller finds it due and another worker delivers it again.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from tests.support.hook import HookServer
from tests.support.procs import Api, Stack
from tests.support.tasks import statuses


def test_worker_killed_mid_delivery_is_delivered_again(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.requeue()
    doomed = stack.worker()
    url = hook.script("/crash", {"sleep": 30, "status": 200}, {"status": 200})
    response = api.enqueue(url, b"work", "text/plain", timeout=2)
    assert response.status_code == 201
    task_id = response.json()["id"]

    assert len(hook.wait_for(1, "/crash", timeout=15)) == 1
    doomed.kill()  # SIGKILL while the hook is still working on attempt 1
    assert api.task(task_id)["status"] == "PENDING"
    stack.worker()

    received = hook.wait_for(2, "/crash", timeout=45)
    assert len(received) == 2, f"not delivered again after the crash:\n{stack.logs()}"
    first, second = received
    assert second.headers["NTQ-Task-Id"] == task_id
    assert second.headers["NTQ-Task-Attempt"] == "2"
    # The lease covers the whole attempt: nobody takes the task before its timeout is up.
    assert second.at - first.at >= 2, f"re-delivered after {second.at - first.at:.1f} s"
    task = api.wait_status(task_id, "COMPLETED", "FAILED", timeout=15)
    assert (task["status"], task["retry_count"]) == ("COMPLETED", 2)


def test_sigterm_lets_the_running_attempt_finish(api: Api, stack: Stack, hook: HookServer) -> None:
    """The first signal stops taking tasks but lets attempts in flight complete."""
    worker = stack.worker()
    url = hook.script("/draining", {"sleep": 2, "status": 200})
    task_id = api.enqueue(url, b"work", "text/plain", timeout=10).json()["id"]
    assert len(hook.wait_for(1, "/draining", timeout=15)) == 1

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output()
    assert "/draining" not in hook.dropped, "the attempt was cut off by a graceful stop"
    task = api.task(task_id)
    assert (task["status"], task["retry_count"]) == ("COMPLETED", 1)


TASKS = 2000


def enqueue_all(stack: Stack, key: str, url: str, count: int) -> list[str]:
    """``count`` tasks: in batches of 1,000 through ``POST /tasks`` where it exists, else
    concurrently through the nTorque-style ``POST /``."""
    api = Api(stack.url, key)
    first = api.post("/tasks", json=[{"url": url, "body": "task 0"}], timeout=60)
    if first.status_code in (404, 405):
        return enqueue_one_by_one(stack, key, url, count)
    assert first.status_code == 201, first.text
    ids = [first.json()["tasks"][0]["id"]]
    while len(ids) < count:
        size = min(1000, count - len(ids))
        batch = [{"url": url, "body": f"task {len(ids) + i}"} for i in range(size)]
        response = api.post("/tasks", json=batch, timeout=60)
        assert response.status_code == 201, response.text
        ids += [task["id"] for task in response.json()["tasks"]]
    return ids


def enqueue_one_by_one(stack: Stack, key: str, url: str, count: int) -> list[str]:
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "api"):
            local.api = Api(stack.url, key)
        response = local.api.enqueue(url, f"task {i}".encode(), "text/plain")
        assert response.status_code == 201, response.text
        task_id: str = response.json()["id"]
        return task_id

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_three_workers_deliver_every_task_exactly_once(
    api: Api, stack: Stack, hook: HookServer, engine: Engine
) -> None:
    for _ in range(3):
        stack.worker("--concurrency", "50")
    stack.requeue()  # re-announce every due task they see: duplicate hints, not deliveries;
    stack.requeue()  # and two pollers must be harmless
    url = hook.script("/bulk")
    authorization = api.http.headers["Authorization"]
    assert isinstance(authorization, str)  # set from a str; requests also allows bytes
    key = authorization.split(" ", 1)[1]

    ids = enqueue_all(stack, key, url, TASKS)
    assert len(set(ids)) == TASKS
    hook.wait_for(TASKS, "/bulk", timeout=60)
    deadline = time.monotonic() + 30
    while statuses(engine).get("COMPLETED", 0) < TASKS and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # several requeue rounds: a duplicate would show up now

    delivered = Counter(r.headers.get("NTQ-Task-Id") for r in hook.requests("/bulk"))
    missing = set(ids) - set(delivered)
    twice = {task_id: n for task_id, n in delivered.items() if n > 1}
    assert not missing, f"{len(missing)} tasks never delivered"
    assert not twice, f"{len(twice)} tasks delivered more than once, e.g. {list(twice)[:3]}"
    assert set(delivered) == set(ids)
    assert statuses(engine) == {"COMPLETED": TASKS}
