"""A task travels the whole path: web -> PostgreSQL -> Redis -> worker -> hook."""

from __future__ import annotations

from tests.support.hook import HookServer
from tests.support.procs import Api, Stack

BINARY = bytes(range(256)) + "héllo wörld ✓".encode("utf-16") + b"\xff\xfe\x00"


def test_delivers_exact_bytes_content_type_and_passthrough_headers(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker()
    url = hook.script("/bin")
    response = api.enqueue(
        url,
        BINARY,
        "application/octet-stream; x=1",
        headers={"NTQ-PASSTHROUGH-X-Trace": "abc", "NTORQUE-PASSTHROUGH-X-Legacy": "old"},
    )
    assert response.status_code == 201
    task = response.json()
    assert response.headers["Location"] == f"{api.base}/tasks/{task['id']}"

    (received,) = hook.wait_for(1, "/bin")
    assert received.body == BINARY
    assert received.method == "POST"
    assert received.headers["Content-Type"] == "application/octet-stream; x=1"
    assert received.headers["X-Trace"] == "abc"
    assert received.headers["X-Legacy"] == "old"
    assert received.headers["NTQ-Task-Id"] == task["id"]
    assert received.headers["NTQ-Task-Attempt"] == "1"
    assert received.headers["User-Agent"].startswith("ntq/")
    assert api.wait_status(task["id"], "COMPLETED")["status"] == "COMPLETED"


def test_cookies_a_hook_sets_are_never_sent_to_any_hook(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    """One worker session serves every application: a cookie kept from one delivery
    would leak to the next task's hook on that host."""
    stack.worker()
    url = hook.script(
        "/c", {"status": 200, "headers": {"Set-Cookie": "sid=secret; Path=/"}}, {"status": 200}
    )
    api.enqueue(url, b"first", "text/plain")
    hook.wait_for(1, "/c")
    api.enqueue(url, b"second", "text/plain")
    first, second = hook.wait_for(2, "/c")
    assert "Cookie" not in first.headers
    assert "Cookie" not in second.headers
