"""Slow and vanishing clients against a real ``ntq web`` (issue 10 item 13).

Thousands of connections that send their headers and then trickle their bodies must not
tie up the web: normal enqueues keep being answered meanwhile, and each trickler gets a
JSON ``408`` once ``NTQ_BODY_TIMEOUT`` has passed. The web starts with the soft limit on
open files most systems default to (1,024), so it must raise that limit to hold them. A
client that disconnects mid-body costs one short log line, not a 500 with a traceback.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from ntq.store.apps import Credentials
from tests.support.procs import Proc, Stack, wait_http
from tests.support.tasks import eventually

TRICKLERS = 2500
DEADLINE = 20  # NTQ_BODY_TIMEOUT for these tests, seconds
HOOK = "http://example.com/hook"
COMMON_SOFT_LIMIT = 1024


def enough_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` (skip if the hard
    limit does not allow it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def web_with_common_limits(stack: Stack, **env: str) -> Proc:
    """``ntq web`` (one worker) started under the common default soft limit of 1,024 open
    files, as a shell or a service manager would leave it."""
    argv = [
        "sh",
        "-c",
        f'ulimit -Sn {COMMON_SOFT_LIMIT} && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "ntq",
        "web",
        "--port",
        str(stack.port),
        "--workers",
        "1",
    ]
    proc = Proc(argv, {**stack.env, **env}, stack.logdir / "web.log").start()
    stack.procs.append(proc)
    wait_http(stack.url + "/healthz", proc)
    return proc


def request_head(port: int, key: str, content_length: int) -> bytes:
    return (
        f"POST /?url={HOOK} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


class Tricklers:
    """Connections that each send a ``POST /``'s headers, then one byte of its body a
    second, until the web answers; what each one got back."""

    def __init__(self, port: int, key: str, count: int) -> None:
        head = request_head(port, key, 1000)
        self.socks = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(head + b"x")
            sock.setblocking(False)
            self.socks.append(sock)
        self.answers: dict[int, bytes] = {}
        self.closed: set[int] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def answered(self) -> int:
        return len(self.answers)

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            for index, sock in enumerate(self.socks):
                if index not in self.closed:
                    self._turn(index, sock)

    def _turn(self, index: int, sock: socket.socket) -> None:
        """Read what the web sent (until it closes); while it has sent nothing, trickle."""
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            if index not in self.answers:
                self._send(sock)
            return
        except OSError:
            data = b""
        if data:
            self.answers[index] = self.answers.get(index, b"") + data
        else:
            self.closed.add(index)

    @staticmethod
    def _send(sock: socket.socket) -> None:
        # The web may have closed the connection: the next recv says so.
        with contextlib.suppress(OSError):
            sock.send(b"x")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


@contextlib.contextmanager
def trickling(port: int, key: str, count: int) -> Iterator[Tricklers]:
    slow = Tricklers(port, key, count)
    try:
        yield slow
    finally:
        slow.close()


def enqueue_on_a_new_connection(base: str, key: str) -> requests.Response:
    """A normal ``POST /`` on a connection of its own (the web must accept a new one),
    with a generous timeout: this is about being served at all, not about speed."""
    return requests.post(
        base + "/",
        params={"url": HOOK},
        data=b"payload",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
        timeout=60,
    )


def test_thousands_of_trickling_clients_leave_enqueues_working_and_get_408(
    stack: Stack, creds: Credentials
) -> None:
    enough_open_files(TRICKLERS + 500)
    web_with_common_limits(stack, NTQ_BODY_TIMEOUT=str(DEADLINE))
    with trickling(stack.port, creds.api_key, TRICKLERS) as slow:
        for _ in range(20):
            response = enqueue_on_a_new_connection(stack.url, creds.api_key)
            assert response.status_code == 201, response.text
        # Every trickler was still being read while those were served.
        assert slow.answered == 0

        eventually(
            lambda: len(slow.closed) == TRICKLERS,
            DEADLINE + 60,
            "every trickler answered and its connection closed",
        )
    answers = [slow.answers.get(index, b"") for index in range(TRICKLERS)]
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {
        answer[:40] for answer in answers
    }
    head, _, body = answers[0].partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "body_timeout"


def test_a_client_that_disconnects_mid_body_leaves_one_short_log_line(
    stack: Stack, creds: Credentials
) -> None:
    web = web_with_common_limits(stack)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(request_head(stack.port, creds.api_key, 1000) + b"only ten b")
    eventually(lambda: "web.client_disconnected" in web.output(), 30, "the disconnect was logged")
    time.sleep(0.5)  # anything else it would log comes right after

    log = web.output()
    assert len([line for line in log.splitlines() if "web.client_disconnected" in line]) == 1, log
    assert "Traceback" not in log
    assert '"exception"' not in log
    assert "internal_error" not in log
    # The web still serves.
    assert enqueue_on_a_new_connection(stack.url, creds.api_key).status_code == 201
