"""Redis is a hint, never the truth (SPEC §1): lose it, flush it or stop it, and every
task stored in PostgreSQL is still delivered."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redis
from sqlalchemy import Engine

from tests.support.hook import HookServer
from tests.support.procs import Api, RedisServer, Stack
from tests.support.tasks import statuses


def enqueue(api: Api, url: str, count: int, **params: Any) -> list[str]:
    ids = []
    for i in range(count):
        response = api.enqueue(url, f"task {i}".encode(), "text/plain", **params)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def assert_all_delivered_once(
    hook: HookServer, path: str, ids: list[str], engine: Engine, stack: Stack
) -> None:
    hook.wait_for(len(ids), path, timeout=30)
    deadline = time.monotonic() + 15
    while statuses(engine).get("COMPLETED", 0) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    delivered = Counter(r.headers.get("NTQ-Task-Id") for r in hook.requests(path))
    missing = set(ids) - set(delivered)
    assert not missing, f"{len(missing)} of {len(ids)} tasks never delivered:\n{stack.logs()}"
    assert all(n == 1 for n in delivered.values()), delivered.most_common(3)
    assert statuses(engine) == {"COMPLETED": len(ids)}


def test_flushed_redis_loses_no_task(
    private_api: Api,
    private_stack: Stack,
    hook: HookServer,
    private_redis: RedisServer,
    engine: Engine,
) -> None:
    url = hook.script("/flushed")
    ids = enqueue(private_api, url, 40)  # no worker yet: every hint waits in Redis
    ids += enqueue(private_api, url, 5, delay=0.5)  # and these wait in its schedule
    server = redis.Redis.from_url(private_redis.url)
    assert server.dbsize() > 0
    server.flushall()
    assert server.dbsize() == 0

    private_stack.worker()
    private_stack.requeue()
    assert_all_delivered_once(hook, "/flushed", ids, engine, private_stack)


def test_enqueue_survives_a_stopped_redis_and_delivery_resumes(
    private_api: Api,
    private_stack: Stack,
    hook: HookServer,
    private_redis: RedisServer,
    engine: Engine,
) -> None:
    worker = private_stack.worker()
    requeue = private_stack.requeue()
    url = hook.script("/outage")
    ids = enqueue(private_api, url, 1)
    assert len(hook.wait_for(1, "/outage", timeout=15)) == 1

    private_redis.stop()
    ids += enqueue(private_api, url, 20)  # PostgreSQL has them: 201, Redis or not
    ids += enqueue(private_api, url, 2, delay=0.5)
    time.sleep(1.5)  # let the worker and the poller run into the outage
    private_redis.start()  # same port, empty

    assert_all_delivered_once(hook, "/outage", ids, engine, private_stack)
    assert worker.alive, "the worker died during the Redis outage"
    assert requeue.alive, "the requeue poller died during the Redis outage"


def test_a_scheduled_retry_survives_a_flush(
    private_api: Api, private_stack: Stack, hook: HookServer, private_redis: RedisServer
) -> None:
    private_stack.worker()
    private_stack.requeue()
    url = hook.script("/again", {"status": 503, "headers": {"Retry-After": "2"}}, {"status": 200})
    (task_id,) = enqueue(private_api, url, 1)
    hook.wait_for(1, "/again", timeout=15)
    deadline = time.monotonic() + 5
    while private_api.task(task_id)["last_status_code"] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis.Redis.from_url(private_redis.url).flushall()  # the retry's wake-up is gone

    assert len(hook.wait_for(2, "/again", timeout=20)) == 2
    task = private_api.wait_status(task_id, "COMPLETED", "FAILED", timeout=10)
    assert (task["status"], task["retry_count"]) == ("COMPLETED", 2)
