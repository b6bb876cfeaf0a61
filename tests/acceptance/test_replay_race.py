"""An attempt from before a cancel and replay can never finish the replayed task (issue 10
item 11): every attempt has an identity of its own, never reused, and the write that ends an
attempt is guarded by it, not by the attempt counter, which a replay resets."""

from __future__ import annotations

import signal

import redis

from tests.support.hook import HookServer
from tests.support.procs import Api, RedisServer, Stack
from tests.support.tasks import attempts, eventually


def test_an_attempt_paused_across_cancel_and_replay_cannot_finish_the_replayed_task(
    private_api: Api, private_stack: Stack, private_redis: RedisServer, hook: HookServer
) -> None:
    api, stack = private_api, private_stack
    old = stack.worker("--concurrency", "1")  # busy with one attempt, it takes no more ids
    url = hook.script(
        "/race",
        {"sleep": 1, "status": 200, "body": "from before the replay"},
        {"status": 200},  # the cancel notice
        {"status": 503},
    )  # the replayed attempt: PENDING, retried much later
    response = api.enqueue(url, b"work", "text/plain", timeout="30")
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    hook.wait_for(1, "/race", method="POST")

    old.signal(signal.SIGSTOP)  # the hook's 200 arrives while this worker is frozen
    try:
        # Nor may the frozen worker hear of the cancel: it would interrupt the attempt and
        # never finish it. (A test of this Redis's own; this would cut off anyone's.)
        redis.Redis.from_url(private_redis.url).client_kill_filter(_type="pubsub")
        stack.worker(NTQ_MIN_DUE_DELAY="600", NTQ_MAX_DUE_DELAY="600")
        assert api.delete(f"/tasks/{task_id}").status_code == 204
        hook.wait_for(1, "/race", method="DELETE", timeout=10)
        eventually(
            lambda: [a["outcome"] for a in attempts(api, task_id)] == ["cancel_notice"],
            5,
            "the cancel notice was not recorded",
        )

        replayed = api.post(f"/tasks/{task_id}/retry")
        assert replayed.status_code == 200, replayed.text
        eventually(
            lambda: api.task(task_id)["last_status_code"] == 503,
            10,
            "the replayed attempt was not recorded",
        )
        assert api.task(task_id)["retry_count"] == 1  # the number the old attempt has too
    finally:
        old.signal(signal.SIGCONT)

    eventually(
        lambda: len(attempts(api, task_id)) == 3, 10, "the old attempt's outcome was not recorded"
    )
    history = attempts(api, task_id)
    assert [(a["method"], a["attempt"], a["status_code"], a["outcome"]) for a in history] == [
        ("DELETE", 1, 200, "cancel_notice"),
        ("POST", 1, 503, "retry"),
        ("POST", 1, 200, "stale"),
    ], history
    task = api.task(task_id)
    assert (task["status"], task["retry_count"], task["last_status_code"]) == ("PENDING", 1, 503), (
        task
    )
    assert len(hook.requests("/race", method="POST")) == 2
