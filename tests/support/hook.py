"""A real HTTP server on loopback that records every request and answers as scripted.

Each path answers with a list of steps, the last one repeating (:meth:`HookServer.script`).
A step is a dict, or a function returning one (called per request, for random answers):

- ``status``, ``headers``, ``body``: the answer (200, no extra headers, ``b"ok"``);
  ``body_size``: instead of ``body``, that many bytes of ``x``, streamed.
- ``sleep``: seconds to wait before answering; a client that hangs up meanwhile gets
  nothing, and the path goes into :attr:`HookServer.dropped`.
- ``answer``: ``False`` closes the connection without a word (after the ``sleep``).
- ``trickle``: seconds between bytes: the body is sent one byte at a time, and the status
  line and headers too if ``trickle_head`` is true; stops when the client hangs up.

Every :class:`Received` request also says how the answer went: the status sent in full,
the bytes written, when the client hung up and when the hook was done with it.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

Step = dict[str, Any]
STREAM_CHUNK = 65536
STREAM_TIMEOUT = 30  # a client that stops reading without closing shows as a hang-up


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() once the request was read
    step: Step = field(default_factory=dict)  # how it was answered
    status: int | None = None  # the status of an answer sent in full; None if none was
    size: int = 0  # bytes of the whole answer
    sent: int = 0  # bytes of it written
    hung_up: float | None = None  # time.time() the client was seen closing the connection
    ended: float | None = None  # time.time() the hook was done with it


@dataclass
class Script:
    """How to answer one path: a list of steps, the last one repeating."""

    steps: list[Step | Callable[[], Step]] = field(default_factory=lambda: [{"status": 200}])
    served: int = 0

    def next(self) -> Step:
        step = self.steps[min(self.served, len(self.steps) - 1)]
        self.served += 1
        return step() if callable(step) else step


class HookServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # a restarted worker opens a connection per greenlet at once

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        super().__init__((host, 0), _Handler)
        self.received: list[Received] = []
        self.scripts: dict[str, Script] = defaultdict(Script)
        self.lock = threading.Condition()
        self.dropped: list[str] = []  # paths whose client went away mid-response

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}"

    def script(self, path: str, *steps: Step | Callable[[], Step]) -> str:
        """Answer ``path`` with ``steps`` in turn (the last repeats); return its URL."""
        self.scripts[path] = Script(list(steps) or [{"status": 200}])
        return self.url + path

    def requests(self, path: str | None = None, method: str | None = None) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.received
                if (path is None or r.path == path) and (method is None or r.method == method)
            ]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 20, method: str | None = None
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = [
                    r
                    for r in self.received
                    if (path is None or r.path == path) and (method is None or r.method == method)
                ]
                if len(found) >= count or time.monotonic() > deadline:
                    return found
                self.lock.wait(0.05)

    def record(self, item: Received) -> Step:
        """Note a request; the step that answers it."""
        with self.lock:
            self.received.append(item)
            self.lock.notify_all()
            return self.scripts[item.path].next()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request (a killed worker) are part of a hook's life.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: HookServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer's body waits ~40 ms for an ACK

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(
            self.command, self.path.split("?")[0], dict(self.headers.items()), body, time.time()
        )
        received.step = step = self.server.record(received)
        try:
            if self._answer(received, step):
                received.status = step.get("status", 200)
            else:
                self.close_connection = True
        except OSError:  # the client went away mid-answer
            received.hung_up = received.hung_up or time.time()
            self.close_connection = True
        finally:
            received.ended = time.time()

    def _answer(self, received: Received, step: Step) -> bool:
        """Answer as ``step`` says; False if no full answer went out."""
        if step.get("sleep") and not self._wait(received, step["sleep"]):
            self.server.dropped.append(received.path)
            return False
        if not step.get("answer", True):
            return False
        head, body = self._head(step), _body(step)
        received.size = len(head) + step.get("body_size", len(body))
        if "trickle" in step:
            return self._trickle(received, head, body, step)
        self._send(received, head + body)
        if "body_size" in step:
            self._stream(received)
        return True

    def _head(self, step: Step) -> bytes:
        status = step.get("status", 200)
        phrase = self.responses.get(status, ("",))[0]
        headers = {
            **step.get("headers", {}),
            "Content-Length": str(step.get("body_size", len(_body(step)))),
        }
        if headers.get("Connection", "").lower() == "close":
            self.close_connection = True
        lines = [f"HTTP/1.1 {status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, received: Received, data: bytes) -> None:
        self.wfile.write(data)
        received.sent += len(data)

    def _stream(self, received: Received) -> None:
        """Write the rest of a ``body_size`` answer, a chunk at a time."""
        self.connection.settimeout(STREAM_TIMEOUT)
        chunk = b"x" * STREAM_CHUNK
        while (left := received.size - received.sent) > 0:
            self._send(received, chunk[:left])
        self.connection.settimeout(None)

    def _trickle(self, received: Received, head: bytes, body: bytes, step: Step) -> bool:
        """Send the answer a byte every ``trickle`` seconds; False if the client hung up."""
        if not step.get("trickle_head"):
            self._send(received, head)
        for byte in (head + body)[received.sent :]:
            self._send(received, bytes([byte]))
            if not self._wait(received, step["trickle"]):
                return False
        return True

    def _wait(self, received: Received, seconds: float) -> bool:
        """Wait, noticing when the client closes the connection. False (and noted) if it
        did."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if ready and self._client_closed():
                received.hung_up = time.time()
                return False
        return True

    def _client_closed(self) -> bool:
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return peeked == b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def _body(step: Step) -> bytes:
    if "body_size" in step:
        return b""
    payload = step.get("body", b"ok")
    return payload.encode() if isinstance(payload, str) else payload


def start_hook(host: str = "127.0.0.1") -> HookServer:
    """A hook receiver serving on ``host`` (any loopback address), on a free port."""
    server = HookServer(host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def gaps(received: list[Received]) -> list[float]:
    """Seconds between one request and the next."""
    return [b.at - a.at for a, b in pairwise(received)]
