"""Cancellation (issue 3, SPEC §3 "Cancellation"), seen from a real hook.

``DELETE /tasks/{id}`` on a PENDING task: CANCELLED at once; a running attempt is
interrupted (the hook sees its connection dropped); no running or later attempt can
complete the task; the hook is sent ``DELETE`` with ``NTQ-Task-Id`` and the pass-through
headers, retried on network errors and recorded as an attempt. A terminal task: 409.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from tests.conftest import app_api, module_stack
from tests.support import tasks
from tests.support.hook import HookServer
from tests.support.procs import Api, Proc, Stack
from tests.support.tasks import TERMINAL, attempts, eventually

# The first retry waits ~2 s: time enough to cancel a task during its backoff.
MIN_DUE_DELAY = "2"
TRACE = {"NTQ-PASSTHROUGH-X-Trace": "trace-1"}

# One web, worker and requeue poller for the module (starting them per test costs seconds);
# every test gets an application of its own, so tests cannot see each other's tasks.
stack = module_stack(requeue=True, NTQ_MIN_DUE_DELAY=MIN_DUE_DELAY)
api = app_api


def worker_of(stack: Stack) -> Proc:
    return next(p for p in stack.procs if p.argv[3] == "worker")


def enqueue(api: Api, url: str, **params: Any) -> str:
    """With a pass-through header, which the cancel notice must carry too."""
    return tasks.enqueue(api, url, b"work", headers=TRACE, **params)


def assert_cancel_notice(hook: HookServer, path: str, task_id: str) -> None:
    (notice,) = hook.wait_for(1, path, method="DELETE", timeout=10)
    assert notice.headers["NTQ-Task-Id"] == task_id
    assert notice.headers.get("X-Trace") == "trace-1", "pass-through headers not sent"
    assert notice.body == b""
    # A message of its own: a receiver de-duplicating on webhook-id still sees it.
    assert notice.headers["webhook-id"] != task_id


def test_cancel_interrupts_the_running_attempt_then_deletes_at_the_hook(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    url = hook.script("/slow", {"sleep": 3}, {"status": 200})
    task_id = enqueue(api, url)
    (started,) = hook.wait_for(1, "/slow", method="POST")
    time.sleep(0.3)  # well inside the hook's 3 s

    cancelled_at = time.time()
    response = api.delete(f"/tasks/{task_id}")
    assert response.status_code == 204, response.text
    assert api.task(task_id)["status"] == "CANCELLED", "not CANCELLED at once"

    dropped_at = eventually(
        lambda: "/slow" in hook.dropped, 5, "the running attempt was not interrupted"
    )
    assert dropped_at - cancelled_at < 2.5, "interrupted too late"
    assert_cancel_notice(hook, "/slow", task_id)

    # Past the time the slow attempt would have answered: still CANCELLED, never retried.
    time.sleep(max(0.0, started.at + 3.8 - time.time()))
    task = api.task(task_id)
    assert task["status"] == "CANCELLED"
    assert task["retry_count"] == 1
    assert task["last_status_code"] is None
    assert len(hook.requests("/slow", method="POST")) == 1

    history = attempts(api, task_id)
    assert [(a["method"], a["outcome"]) for a in history] == [
        ("POST", "interrupted"),
        ("DELETE", "cancel_notice"),
    ], history
    assert history[0]["status_code"] is None
    assert history[1]["status_code"] == 200

    again = api.delete(f"/tasks/{task_id}")
    assert again.status_code == 409
    assert again.json()["error"]["code"]


def test_an_outcome_arriving_after_the_cancel_is_ignored(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    """The worker is frozen (SIGSTOP) while the hook answers 200 and the task is
    cancelled: when it resumes, the 200 is in its socket. Whether it notices the cancel
    first or the response first, the task must stay CANCELLED."""
    worker = worker_of(stack)
    url = hook.script("/late", {"sleep": 0.5, "body": "done"}, {"status": 200})
    task_id = enqueue(api, url)
    hook.wait_for(1, "/late", method="POST")
    worker.signal(signal.SIGSTOP)
    try:
        assert api.delete(f"/tasks/{task_id}").status_code == 204
        time.sleep(1.0)  # the hook has answered 200 into the frozen worker's socket
        assert "/late" not in hook.dropped
    finally:
        worker.signal(signal.SIGCONT)

    assert_cancel_notice(hook, "/late", task_id)
    eventually(
        lambda: any(a["outcome"] == "cancel_notice" for a in attempts(api, task_id)),
        5,
        "the notice was not recorded",
    )
    task = api.task(task_id)
    assert task["status"] == "CANCELLED"
    assert task["last_status_code"] is None, "the late 200 was applied to the task"
    history = attempts(api, task_id)
    assert history[0]["outcome"] in ("interrupted", "stale"), history
    assert [a["outcome"] for a in history][-1] == "cancel_notice"
    assert len(hook.requests("/late", method="POST")) == 1
    response = api.get(f"/tasks/{task_id}")
    assert response.json()["status"] == "CANCELLED"


def test_cancel_while_waiting_for_a_retry_stops_all_further_attempts(
    api: Api, hook: HookServer
) -> None:
    """The requeue poller runs too: it must not bring the task back either."""
    url = hook.script("/again", {"status": 500}, {"status": 200})
    task_id = enqueue(api, url)
    (first,) = hook.wait_for(1, "/again", method="POST")
    eventually(
        lambda: api.task(task_id)["last_status_code"] == 500,
        5,
        "the failed attempt was not recorded",
    )
    assert api.task(task_id)["status"] == "PENDING"

    assert api.delete(f"/tasks/{task_id}").status_code == 204
    assert_cancel_notice(hook, "/again", task_id)

    # The retry was due ~2 s (+/- 10 %) after the failure; wait well past it.
    time.sleep(max(0.0, first.at + 4.0 - time.time()))
    assert len(hook.requests("/again", method="POST")) == 1, "attempted after the cancel"
    task = api.task(task_id)
    assert (task["status"], task["retry_count"]) == ("CANCELLED", 1)
    assert [a["outcome"] for a in attempts(api, task_id)] == ["retry", "cancel_notice"]


def test_cancel_of_a_finished_task_is_409(api: Api, stack: Stack, hook: HookServer) -> None:
    done = enqueue(api, hook.script("/ok", {"status": 200}))
    failed = enqueue(api, hook.script("/no", {"status": 404}))
    assert api.wait_status(done, *TERMINAL)["status"] == "COMPLETED"
    assert api.wait_status(failed, *TERMINAL)["status"] == "FAILED"

    for task_id, status in ((done, "COMPLETED"), (failed, "FAILED")):
        response = api.delete(f"/tasks/{task_id}")
        assert response.status_code == 409, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"]
        assert error["message"]
        assert api.task(task_id)["status"] == status
    time.sleep(0.8)
    assert hook.requests(method="DELETE") == [], "a finished task's hook got a DELETE"
    missing = api.delete("/tasks/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    assert missing.status_code == 404


def test_the_cancel_delete_is_retried_after_a_network_error(api: Api, hook: HookServer) -> None:
    """Asked for always, the notice goes even though no attempt began; its retry is the
    same message (the same ``webhook-id``), which is not the deliveries' (the task id)."""
    # The first connection is dropped without an answer (a network error), then 200.
    url = hook.script("/flaky", {"answer": False}, {"status": 200})
    task_id = enqueue(api, url, delay=60, cancel_notice="always")
    assert api.delete(f"/tasks/{task_id}").status_code == 204
    eventually(lambda: len(hook.requests("/flaky")) >= 2, 10, "the DELETE was not retried")
    first, retry = hook.requests("/flaky")
    assert (first.method, retry.method) == ("DELETE", "DELETE")
    assert (first.status, retry.status) == (None, 200)
    assert retry.headers["NTQ-Task-Id"] == task_id
    assert retry.headers["X-Trace"] == "trace-1"
    assert retry.headers["webhook-id"] == first.headers["webhook-id"], (
        "the retry is another message"
    )
    assert retry.headers["webhook-id"] != task_id
    eventually(lambda: attempts(api, task_id), 5, "the notice was not recorded")
    history = attempts(api, task_id)
    assert [(a["method"], a["outcome"], a["status_code"]) for a in history] == [
        ("DELETE", "cancel_notice", 200)
    ], history


def test_a_hook_that_has_not_started_gets_no_notice_unless_asked(
    api: Api, hook: HookServer
) -> None:
    """``cancel_notice``: ``started`` (the default) sends the DELETE only once an attempt
    has begun; ``always`` sends it anyway; ``never`` does not, even mid-attempt. Both
    enqueue forms take it, and the task shows it."""
    default = enqueue(api, hook.script("/default"), delay=60)
    always = api.post(
        "/tasks", json={"url": hook.script("/always"), "delay": 60, "cancel_notice": "always"}
    ).json()["id"]
    never = enqueue(
        api, hook.script("/never", {"sleep": 3}, {"status": 200}), cancel_notice="never"
    )
    hook.wait_for(1, "/never", method="POST")
    assert [api.task(t)["cancel_notice"] for t in (default, always, never)] == [
        "started",
        "always",
        "never",
    ]

    for task_id in (default, always, never):
        assert api.delete(f"/tasks/{task_id}").status_code == 204
    hook.wait_for(1, "/always", method="DELETE", timeout=10)
    eventually(lambda: "/never" in hook.dropped, 5, "the running attempt was not interrupted")
    time.sleep(1.5)  # well past the moment a notice would have gone
    assert hook.requests(method="DELETE") == hook.requests("/always"), "an unasked notice"
    assert [a["outcome"] for a in attempts(api, default)] == []
    assert [a["outcome"] for a in attempts(api, never)] == ["interrupted"]
    assert {api.task(t)["status"] for t in (default, always, never)} == {"CANCELLED"}
