"""Hostile webhooks (SPEC §4, issue 4 item 11): a hook that never answers, one that
trickles a byte a second, one that sends a 100 MB body and one that redirects in a loop are
each cut off by the task's timeout or by ntq's limits, the attempts say so, and the same
worker keeps delivering other tasks meanwhile.

The hostile servers are small raw-socket servers written here: an HTTP library would not
misbehave on purpose.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.hook import HookServer
from tests.support.procs import Api, Stack
from tests.support.tasks import TERMINAL, attempts, enqueue, wait_until

TIMEOUT = 8  # the hostile tasks' timeout, in seconds
MAX_RESPONSE_BYTES = 100_000  # not a multiple of any read size: the cut must be exact
HUGE = 100 * 1024 * 1024
TIMED_OUT = re.compile(r"time(d)?[ _-]?out", re.IGNORECASE)

Behaviour = Callable[["RawHook", socket.socket, bytes], None]


class RawHook:
    """A loopback TCP server: reads one HTTP request per connection, records it, then
    behaves as told. Notes when the client (the worker) closes the connection."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.heads: list[bytes] = []  # request line and headers of every request
        self.open = 0  # connections currently open
        self.peer_closed: list[float] = []  # when the client hung up, per connection
        self.sent = 0  # bytes written to clients
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.heads)

    def close(self) -> None:
        self.running = False
        self.listener.close()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = _read_request(conn)
            with self.lock:
                self.heads.append(head)
            self.behave(self, conn, head)
        except OSError:
            self.hung_up()
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def hung_up(self) -> None:
        with self.lock:
            self.peer_closed.append(time.monotonic())

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.lock:
            self.sent += len(data)

    def wait_hang_up(self, conn: socket.socket, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to close; True (and noted) if it did."""
        readable, _, _ = select.select([conn], [], [], seconds)
        if readable:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.hung_up()
                return True
        return False


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client closed before sending a request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    remaining = int(match.group(1)) - len(rest) if match else 0
    while remaining > 0:
        chunk = conn.recv(remaining)
        if not chunk:
            break
        remaining -= len(chunk)
    conn.settimeout(None)
    return head


def never_answers(server: RawHook, conn: socket.socket, head: bytes) -> None:
    """Accept, read the request, and never write a byte."""
    server.wait_hang_up(conn, 120)


def trickle(response: bytes, headers_at_once: bool) -> Behaviour:
    """Send ``response`` one byte a second (after the headers, if ``headers_at_once``)."""

    def behave(server: RawHook, conn: socket.socket, head: bytes) -> None:
        data = response
        if headers_at_once:
            split = response.index(b"\r\n\r\n") + 4
            server.send(conn, response[:split])
            data = response[split:]
        for byte in data:
            server.send(conn, bytes([byte]))
            if server.wait_hang_up(conn, 1):
                return
        server.wait_hang_up(conn, 120)

    return behave


def huge_body(server: RawHook, conn: socket.socket, head: bytes) -> None:
    """A 200 with a 100 MB body, streamed until the client stops reading and hangs up."""
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: %d\r\n\r\n" % HUGE)
    chunk = b"x" * 65536
    conn.settimeout(30)  # a client that stops reading without closing shows as a timeout
    left = HUGE
    while left > 0:
        server.send(conn, chunk)
        left -= len(chunk)
    server.wait_hang_up(conn, 120)


def redirect_loop(server: RawHook, conn: socket.socket, head: bytes) -> None:
    """/a redirects to /b, /b to /a, forever."""
    target = b"/b" if head.split(b" ")[1].startswith(b"/a") else b"/a"
    server.send(conn, b"HTTP/1.1 302 Found\r\nLocation: " + target +
                b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


OK_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n"
               b"hello world!")


@pytest.fixture
def hostile() -> Iterator[dict[str, RawHook]]:
    servers = {
        "silent": RawHook(never_answers),
        "trickle_head": RawHook(trickle(OK_RESPONSE, headers_at_once=False)),
        "trickle_body": RawHook(trickle(OK_RESPONSE, headers_at_once=True)),
        "huge": RawHook(huge_body),
        "redirect": RawHook(redirect_loop),
    }
    yield servers
    for server in servers.values():
        server.close()


def test_hostile_hooks_are_cut_off_and_the_worker_keeps_delivering_meanwhile(
        api: Api, stack: Stack, hook: HookServer, hostile: dict[str, RawHook]) -> None:
    worker = stack.worker("--concurrency", "8",
                          NTQ_MAX_RESPONSE_BYTES=str(MAX_RESPONSE_BYTES))
    ids = {name: enqueue(api, server.url + "/a", timeout=TIMEOUT, max_retries=0)
           for name, server in hostile.items()}
    stalling = [hostile[n] for n in ("silent", "trickle_head", "trickle_body")]
    assert wait_until(lambda: all(s.requests == 1 for s in stalling), 15), \
        "the hostile hooks were not all called"

    # A normal task enqueued now is delivered while the hostile attempts still hang.
    normal = enqueue(api, hook.script("/normal"))
    assert api.wait_status(normal, "COMPLETED", timeout=TIMEOUT - 2)["status"] == "COMPLETED"
    assert all(s.open == 1 and not s.peer_closed for s in stalling), \
        "the normal task was only delivered after the hostile attempts were cut off"
    assert hook.requests("/normal")[0].headers["NTQ-Task-Id"] == normal

    tasks = {name: api.wait_status(task_id, *TERMINAL, timeout=TIMEOUT + 20)
             for name, task_id in ids.items()}
    history = {name: attempts(api, task_id) for name, task_id in ids.items()}
    assert all(len(h) == 1 for h in history.values()), history
    for name in ("silent", "trickle_head", "trickle_body"):
        (attempt,) = history[name]
        assert tasks[name]["status"] == "FAILED", (name, tasks[name])
        assert attempt["status_code"] is None, (name, attempt)
        assert TIMED_OUT.search(attempt["error"] or ""), (name, attempt)
        assert TIMED_OUT.search(tasks[name]["last_error"] or ""), (name, tasks[name])
        # Cut at the task's timeout: not before it, and not much after it.
        assert TIMEOUT * 1000 - 100 <= attempt["elapsed_ms"] <= (TIMEOUT + 5) * 1000, \
            (name, attempt)
        assert wait_until(lambda s=hostile[name]: s.peer_closed, 5), \
            f"{name}: the worker never closed the connection"
    assert hostile["trickle_head"].sent < len(OK_RESPONSE), "the trickle was not cut off"

    # The 100 MB body: read up to NTQ_MAX_RESPONSE_BYTES, marked truncated, then dropped.
    assert tasks["huge"]["status"] == "COMPLETED", tasks["huge"]
    response = api.get(f"/tasks/{ids['huge']}/response")
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["status_code"] == 200
    assert stored["truncated"] is True
    assert stored["body"] == "x" * MAX_RESPONSE_BYTES
    assert wait_until(lambda: hostile["huge"].peer_closed, 10), \
        "the worker kept the 100 MB response open"
    assert hostile["huge"].sent < HUGE // 2, \
        f"the worker read {hostile['huge'].sent} bytes of a body it caps at {MAX_RESPONSE_BYTES}"

    # The redirect loop: stopped by the redirect limit (5 hops), long before the timeout.
    (attempt,) = history["redirect"]
    assert tasks["redirect"]["status"] == "FAILED", tasks["redirect"]
    assert "redirect" in (attempt["error"] or "").lower(), attempt
    assert 2 <= hostile["redirect"].requests <= 7, hostile["redirect"].heads
    assert attempt["elapsed_ms"] < TIMEOUT * 1000, attempt

    assert worker.alive, worker.output()
    # Still serving after all that.
    again = enqueue(api, hook.script("/after"))
    assert api.wait_status(again, "COMPLETED", timeout=15)["status"] == "COMPLETED"
