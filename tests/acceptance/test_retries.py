"""Outcomes, retries, backoff and timeouts (SPEC §4), seen from a real hook.

The stack runs with NTQ_MIN_DUE_DELAY=0.2 and NTQ_MAX_DUE_DELAY=5: exponential backoff
waits ~0.2 s after the first failure and ~0.4 s after the second (+/- 10 % jitter).
"""

from __future__ import annotations

import re
import time

from tests.support.hook import HookServer, gaps
from tests.support.procs import Api, Stack, free_port
from tests.support.tasks import enqueue, finished

TIMED_OUT = re.compile(r"time(d)?[ _-]?out", re.IGNORECASE)


def quiet_period(seconds: float = 1.2) -> None:
    """Long enough for several backoff delays and requeue rounds: a wrong extra attempt
    would arrive within it."""
    time.sleep(seconds)


def test_two_500s_then_200_completes_on_the_third_attempt_after_backoff(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker()
    url = hook.script("/flaky", {"status": 500}, {"status": 500}, {"status": 200})
    task_id = enqueue(api, url)

    task = finished(api, task_id)
    assert task["status"] == "COMPLETED"
    assert task["retry_count"] == 3
    assert task["last_status_code"] == 200
    received = hook.requests("/flaky")
    assert len(received) == 3
    assert [r.headers["NTQ-Task-Attempt"] for r in received] == ["1", "2", "3"]
    assert {r.headers["NTQ-Task-Id"] for r in received} == {task_id}
    first, second = gaps(received)
    assert first >= 0.15, f"retried {first:.3f} s after the first failure (min delay 0.2 s)"
    assert second >= 0.3, f"retried {second:.3f} s after the second failure (backoff 0.4 s)"


def test_any_2xx_completes_at_once(api: Api, stack: Stack, hook: HookServer) -> None:
    """nTorque counted 202 and 204 as failures and retried them."""
    stack.worker()
    codes = [200, 201, 202, 204]
    ids = {
        code: enqueue(
            api, hook.script(f"/ok{code}", {"status": code, "body": b"" if code == 204 else b"ok"})
        )
        for code in codes
    }

    tasks = {code: finished(api, task_id) for code, task_id in ids.items()}
    quiet_period()
    for code, task in tasks.items():
        assert (task["status"], task["retry_count"], task["last_status_code"]) == (
            "COMPLETED",
            1,
            code,
        ), (code, task)
        assert len(hook.requests(f"/ok{code}")) == 1, f"{code} was attempted again"


def test_permanent_errors_fail_at_once(api: Api, stack: Stack, hook: HookServer) -> None:
    """404, 410 and every other non-transient 4xx: one attempt, then FAILED, however
    large the retry budget."""
    stack.worker()
    codes = [400, 401, 403, 404, 405, 409, 410, 422]
    ids = {
        code: enqueue(api, hook.script(f"/e{code}", {"status": code}), max_retries=50)
        for code in codes
    }

    tasks = {code: finished(api, task_id) for code, task_id in ids.items()}
    quiet_period()
    for code, task in tasks.items():
        assert task["status"] == "FAILED", (code, task)
        assert task["retry_count"] == 1, (code, task)
        assert task["last_status_code"] == code, (code, task)
        assert str(code) in (task["last_error"] or ""), (code, task)
        assert len(hook.requests(f"/e{code}")) == 1, f"{code} was attempted again"


def test_transient_errors_are_retried(api: Api, stack: Stack, hook: HookServer) -> None:
    """408, 423, 425, 429, 449 and any 5xx: retried, then the 200 completes the task."""
    stack.worker()
    codes = [408, 423, 425, 429, 449, 500, 502, 503, 504]
    ids = {
        code: enqueue(api, hook.script(f"/t{code}", {"status": code}, {"status": 200}))
        for code in codes
    }

    for code, task_id in ids.items():
        task = finished(api, task_id)
        assert (task["status"], task["retry_count"]) == ("COMPLETED", 2), (code, task)
        assert len(hook.requests(f"/t{code}")) == 2, code


def test_retry_after_sets_the_next_attempt_time_up_to_the_maximum_delay(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker(NTQ_MAX_DUE_DELAY="3")
    busy = hook.script("/busy", {"status": 429, "headers": {"Retry-After": "2"}}, {"status": 200})
    down = hook.script("/down", {"status": 503, "headers": {"Retry-After": "1"}}, {"status": 200})
    later = hook.script(
        "/later", {"status": 503, "headers": {"Retry-After": "3600"}}, {"status": 200}
    )
    ids = [enqueue(api, busy), enqueue(api, down), enqueue(api, later)]

    assert [finished(api, task_id)["status"] for task_id in ids] == ["COMPLETED"] * 3
    (busy_gap,) = gaps(hook.requests("/busy"))
    (down_gap,) = gaps(hook.requests("/down"))
    (later_gap,) = gaps(hook.requests("/later"))
    assert busy_gap >= 1.8, f"429 with Retry-After: 2 was retried after {busy_gap:.2f} s"
    assert down_gap >= 0.9, f"503 with Retry-After: 1 was retried after {down_gap:.2f} s"
    # Honoured up to the cap: about 3 s, not the 0.2 s backoff, not an hour.
    assert 2.7 <= later_gap < 10, (
        f"Retry-After: 3600 with NTQ_MAX_DUE_DELAY=3 waited {later_gap:.1f} s"
    )


def test_hook_slower_than_the_timeout_is_cut_off_and_retried(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker()
    slow = hook.script("/slow", {"sleep": 3, "status": 200}, {"status": 200})
    stuck = hook.script("/stuck", {"sleep": 4, "status": 200})
    slow_id = enqueue(api, slow, timeout=1)
    stuck_id = enqueue(api, stuck, timeout=1, max_retries=0)

    task = finished(api, slow_id)
    assert (task["status"], task["retry_count"]) == ("COMPLETED", 2)
    first, second = hook.requests("/slow")
    assert second.headers["NTQ-Task-Attempt"] == "2"
    # The worker hung up on the first attempt: the hook noticed before its 3 s were up.
    assert "/slow" in hook.dropped
    assert second.at - first.at >= 0.9, "gave up before the 1 s timeout"

    stuck_task = finished(api, stuck_id)
    assert (stuck_task["status"], stuck_task["retry_count"]) == ("FAILED", 1)
    assert stuck_task["last_status_code"] is None
    assert TIMED_OUT.search(stuck_task["last_error"] or ""), stuck_task["last_error"]


def test_hook_slower_than_the_backoff_is_delivered_exactly_once(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    """nTorque delivered a 15-second hook three times: acquiring did not push ``due`` past
    the attempt, so the requeue poller handed the running task out again."""
    stack.worker()
    stack.worker()
    stack.requeue()  # polls every 0.5 s, well within each 2 s delivery
    url = hook.script("/long", {"sleep": 2, "status": 200})
    ids = [enqueue(api, url, timeout=10) for _ in range(3)]

    tasks = [finished(api, task_id) for task_id in ids]
    quiet_period(1.5)
    assert [(t["status"], t["retry_count"]) for t in tasks] == [("COMPLETED", 1)] * 3
    delivered = sorted(r.headers["NTQ-Task-Id"] for r in hook.requests("/long"))
    assert delivered == sorted(ids), "a slow task was delivered more than once"


def test_a_trickling_hook_is_cut_off_at_the_task_timeout(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    """Per-read socket timeouts never fire on a hook that sends a byte every 0.5 s, in its
    body or already in its status line; the task's timeout bounds the whole attempt."""
    trickle = {"trickle": 0.5, "headers": {"Content-Type": "text/plain"}, "body": b"x" * 1000}
    urls = {
        "body": hook.script("/trickle-body", trickle),
        "head": hook.script("/trickle-head", {**trickle, "trickle_head": True}),
    }
    stack.worker()
    ids = {part: enqueue(api, url, timeout=2, max_retries=0) for part, url in urls.items()}
    tasks = {part: finished(api, task_id, timeout=20) for part, task_id in ids.items()}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(
        r.hung_up for part in urls for r in hook.requests(f"/trickle-{part}")
    ):
        time.sleep(0.05)
    for part in urls:
        task = tasks[part]
        assert task["status"] == "FAILED", (part, task)
        assert TIMED_OUT.search(task["last_error"] or ""), (part, task["last_error"])
        (received,) = hook.requests(f"/trickle-{part}")
        assert received.hung_up, f"the worker never hung up on the {part} trickle"
        held = received.hung_up - received.at
        assert 1.5 <= held <= 2 + 4, f"{part}: timeout 2 s held the connection {held:.1f} s"


def test_out_of_retries_fails_and_keeps_the_last_error(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker()
    broken = hook.script("/broken", {"status": 500, "body": b"boom"})
    broken_id = enqueue(api, broken, max_retries=1)
    refused_id = enqueue(api, f"http://127.0.0.1:{free_port()}/nobody-home", max_retries=1)

    broken_task = finished(api, broken_id)
    refused_task = finished(api, refused_id)
    quiet_period()
    assert (broken_task["status"], broken_task["retry_count"]) == ("FAILED", 2)
    assert broken_task["last_status_code"] == 500
    assert "500" in (broken_task["last_error"] or "")
    assert len(hook.requests("/broken")) == 2, "attempted beyond max_retries=1"
    assert (refused_task["status"], refused_task["retry_count"]) == ("FAILED", 2)
    assert refused_task["last_status_code"] is None
    assert refused_task["last_error"], "the connection error was not kept"
