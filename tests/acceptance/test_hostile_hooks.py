"""Hostile webhooks (SPEC §4, issue 4 item 11): a hook that never answers, one that
trickles a byte a second, one that sends a 100 MB body and one that redirects in a loop are
each cut off by the task's timeout or by ntq's limits, the attempts say so, and the same
worker keeps delivering other tasks meanwhile.
"""

from __future__ import annotations

import re
from functools import partial

from tests.support.hook import HookServer, Received, Step
from tests.support.procs import Api, Stack
from tests.support.tasks import TERMINAL, attempts, enqueue, wait_until

TIMEOUT = 8  # the hostile tasks' timeout, in seconds
MAX_RESPONSE_BYTES = 100_000  # not a multiple of any read size: the cut must be exact
HUGE = 100 * 1024 * 1024
TIMED_OUT = re.compile(r"time(d)?[ _-]?out", re.IGNORECASE)

OK: Step = {"headers": {"Content-Type": "text/plain"}, "body": b"hello world!"}
HOSTILE: dict[str, Step] = {
    "silent": {"sleep": 120, "answer": False},  # reads the request, never writes a byte
    "trickle_head": {**OK, "trickle": 1, "trickle_head": True},  # a byte a second
    "trickle_body": {**OK, "trickle": 1},  # the head at once, then a byte a second
    "huge": {"headers": {"Content-Type": "text/plain"}, "body_size": HUGE},
}
STALLING = ("silent", "trickle_head", "trickle_body")


def only(hook: HookServer, name: str) -> Received:
    """The one request a hostile path received."""
    (received,) = hook.requests(f"/{name}")
    return received


def hung_up(hook: HookServer, name: str) -> float | None:
    """When the worker closed the connection of a hostile path's one request, if it has."""
    return only(hook, name).hung_up


def test_hostile_hooks_are_cut_off_and_the_worker_keeps_delivering_meanwhile(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    worker = stack.worker("--concurrency", "8", NTQ_MAX_RESPONSE_BYTES=str(MAX_RESPONSE_BYTES))
    urls = {name: hook.script(f"/{name}", step) for name, step in HOSTILE.items()}
    urls["redirect"] = hook.script(
        "/redirect/a", {"status": 302, "headers": {"Location": "/redirect/b"}}
    )
    hook.script("/redirect/b", {"status": 302, "headers": {"Location": "/redirect/a"}})
    ids = {name: enqueue(api, url, timeout=TIMEOUT, max_retries=0) for name, url in urls.items()}
    assert wait_until(lambda: all(len(hook.requests(f"/{n}")) == 1 for n in STALLING), 15), (
        "the hostile hooks were not all called"
    )

    # A normal task enqueued now is delivered while the hostile attempts still hang.
    normal = enqueue(api, hook.script("/normal"))
    assert api.wait_status(normal, "COMPLETED", timeout=TIMEOUT - 2)["status"] == "COMPLETED"
    assert all(only(hook, n).ended is None and only(hook, n).hung_up is None for n in STALLING), (
        "the normal task was only delivered after the hostile attempts were cut off"
    )
    assert hook.requests("/normal")[0].headers["NTQ-Task-Id"] == normal

    tasks = {
        name: api.wait_status(task_id, *TERMINAL, timeout=TIMEOUT + 20)
        for name, task_id in ids.items()
    }
    history = {name: attempts(api, task_id) for name, task_id in ids.items()}
    assert all(len(h) == 1 for h in history.values()), history
    for name in STALLING:
        (attempt,) = history[name]
        assert tasks[name]["status"] == "FAILED", (name, tasks[name])
        assert attempt["status_code"] is None, (name, attempt)
        assert TIMED_OUT.search(attempt["error"] or ""), (name, attempt)
        assert TIMED_OUT.search(tasks[name]["last_error"] or ""), (name, tasks[name])
        # Cut at the task's timeout: not before it, and not much after it.
        assert TIMEOUT * 1000 - 100 <= attempt["elapsed_ms"] <= (TIMEOUT + 5) * 1000, (
            name,
            attempt,
        )
        assert wait_until(partial(hung_up, hook, name), 5), (
            f"{name}: the worker never closed the connection"
        )
    trickled = only(hook, "trickle_head")
    assert trickled.sent < trickled.size, "the trickle was not cut off"

    # The 100 MB body: read up to NTQ_MAX_RESPONSE_BYTES, marked truncated, then dropped.
    assert tasks["huge"]["status"] == "COMPLETED", tasks["huge"]
    response = api.get(f"/tasks/{ids['huge']}/response")
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["status_code"] == 200
    assert stored["truncated"] is True
    assert stored["body"] == "x" * MAX_RESPONSE_BYTES
    assert wait_until(lambda: only(hook, "huge").hung_up, 10), (
        "the worker kept the 100 MB response open"
    )
    huge = only(hook, "huge")
    assert huge.sent < HUGE // 2, (
        f"the worker read {huge.sent} bytes of a body it caps at {MAX_RESPONSE_BYTES}"
    )

    # The redirect loop: stopped by the redirect limit (5 hops), long before the timeout.
    (attempt,) = history["redirect"]
    assert tasks["redirect"]["status"] == "FAILED", tasks["redirect"]
    assert "redirect" in (attempt["error"] or "").lower(), attempt
    hops = [r.path for r in hook.requests() if r.path.startswith("/redirect/")]
    assert 2 <= len(hops) <= 7, hops
    assert attempt["elapsed_ms"] < TIMEOUT * 1000, attempt

    assert worker.alive, worker.output()
    # Still serving after all that.
    again = enqueue(api, hook.script("/after"))
    assert api.wait_status(again, "COMPLETED", timeout=15)["status"] == "COMPLETED"
