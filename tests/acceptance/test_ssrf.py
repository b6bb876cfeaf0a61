"""The SSRF guard in the real worker (SPEC §5, issue 4 item 2): on by default, checked on
the address actually connected to, on every redirect and for callbacks; a refusal fails the
task at once with a clear error in its attempts; ``ntq serve`` says which mode it runs in."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import stack_env
from tests.support.hook import HookServer
from tests.support.procs import Api, Stack, free_port
from tests.support.tasks import enqueue

ALLOW_ONLY_127_0_0_2 = "127.0.0.2/32"


def assert_refused_task(api: Api, task_id: str) -> dict[str, Any]:
    """The task FAILED on its first attempt, refused by the guard, and says so."""
    task = api.wait_status(task_id, "COMPLETED", "FAILED", "CANCELLED")
    assert task["status"] == "FAILED", task
    assert task["retry_count"] == 1, task  # refused is final: no retries
    assert "refused" in task["last_error"], task
    assert "non-public" in task["last_error"], task
    attempts = api.get(f"/tasks/{task_id}/attempts").json()["attempts"]
    assert len(attempts) == 1, attempts
    assert attempts[0]["status_code"] is None
    assert attempts[0]["error"].startswith("refused:"), attempts
    assert "non-public" in attempts[0]["error"]
    assert "NTQ_ALLOW_PRIVATE_NETWORKS" in attempts[0]["error"]
    return task


def test_guard_is_on_by_default_and_a_loopback_task_fails_visibly(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.env.pop("NTQ_ALLOW_PRIVATE_NETWORKS")  # the product's default, not the suite's
    stack.worker()
    task_id = enqueue(api, hook.script("/loopback"), max_retries=5)

    assert_refused_task(api, task_id)
    assert hook.received == []


NON_PUBLIC_HOSTS = [
    "localhost",
    "127.0.0.1",
    "[::1]",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "127.1",
    "2130706433",
    "10.0.0.1",
    "10.255.255.254",
    "172.16.0.1",
    "172.31.0.1",
    "192.168.0.1",
    "192.168.1.254",
    "169.254.169.254",
    "100.64.0.1",
    "[fe80::1]",
    "[fd00::1]",
    "224.0.0.1",
]


def test_every_non_public_host_is_refused_at_connect_time(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker(NTQ_ALLOW_PRIVATE_NETWORKS="false")
    port = hook.server_address[1]
    # Every URL is valid at enqueue (the web cannot know what a name resolves to later);
    # the worker refuses each when it is about to connect.
    ids = {
        host: enqueue(api, f"http://{host}:{port}/metadata", timeout=5, max_retries=2)
        for host in NON_PUBLIC_HOSTS
    }
    for host, task_id in ids.items():
        task = assert_refused_task(api, task_id)
        assert task["url"] == f"http://{host}:{port}/metadata"
    assert hook.received == []


def test_redirect_to_a_private_host_is_refused(
    api: Api, stack: Stack, hook: HookServer, hook2: HookServer
) -> None:
    stack.worker(NTQ_ALLOW_PRIVATE_NETWORKS=ALLOW_ONLY_127_0_0_2)
    internal = hook.script("/internal")
    hook2.script("/redirect", {"status": 302, "headers": {"Location": internal}})
    hook2.script("/temporary", {"status": 307, "headers": {"Location": internal}})
    hook2.script("/ok")

    control = enqueue(api, hook2.url + "/ok")  # the allow list lets 127.0.0.2 through
    assert api.wait_status(control, "COMPLETED", "FAILED")["status"] == "COMPLETED"
    for path in ("/redirect", "/temporary"):
        assert_refused_task(api, enqueue(api, hook2.url + path, max_retries=3))
        assert len(hook2.requests(path)) == 1
    assert hook.received == []


def test_callback_to_a_private_address_is_refused(
    api: Api, stack: Stack, hook: HookServer, hook2: HookServer
) -> None:
    stack.worker(NTQ_ALLOW_PRIVATE_NETWORKS=ALLOW_ONLY_127_0_0_2)
    private_callback = hook.script("/callback")
    task_id = enqueue(api, hook2.script("/work"), callback=private_callback)
    control_id = enqueue(api, hook2.script("/work2"), callback=hook2.script("/callback"))

    assert api.wait_status(task_id, "COMPLETED", "FAILED")["status"] == "COMPLETED"
    callbacks = wait_callbacks(api, {task_id, control_id})
    assert_refused_task(api, callbacks[task_id])
    assert api.wait_status(callbacks[control_id], "COMPLETED", "FAILED")["status"] == "COMPLETED"
    assert len(hook2.requests("/callback")) == 1
    assert hook.received == []


def wait_callbacks(api: Api, of: set[str], timeout: float = 30) -> dict[str, str]:
    """The ids of the callback deliveries of the tasks ``of``, once they all exist."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        listed = api.get("/tasks", params={"limit": "1000"}).json()["tasks"]
        found = {t["callback_of"]: t["id"] for t in listed if t.get("callback_of") in of}
        if set(found) == of:
            return found
        time.sleep(0.1)
    raise AssertionError(f"callback tasks not created: {found}")


def test_serve_says_at_start_up_that_private_targets_are_refused(
    clean: None, migrated: str, redis_url: str, tmp_path: Path
) -> None:
    env = stack_env(migrated, redis_url, PORT=str(free_port()), NTQ_DATA_DIR=str(tmp_path / "data"))
    env.pop("NTQ_ALLOW_PRIVATE_NETWORKS")
    with (tmp_path / "serve.err").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ntq", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        lines = read_until(proc, "serving", timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    serving = [line for line in lines if "serving" in line]
    assert serving, lines
    assert "private network targets are refused" in serving[0], lines


def read_until(proc: subprocess.Popen[bytes], text: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [line.decode(errors="replace") for line in complete]
            if any(text in line for line in lines):
                return lines
        elif proc.poll() is not None:
            break
    raise AssertionError(f"{text!r} never printed; got {lines}")
