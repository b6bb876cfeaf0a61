"""A real HTTP server on loopback that records every request and answers as scripted."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Script:
    """How to answer one path: a list of steps, the last one repeating."""

    steps: list[dict[str, Any]] = field(default_factory=lambda: [{"status": 200}])
    served: int = 0

    def next(self) -> dict[str, Any]:
        step = self.steps[min(self.served, len(self.steps) - 1)]
        self.served += 1
        return step


class HookServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

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

    def script(self, path: str, *steps: dict[str, Any]) -> str:
        """Answer ``path`` with ``steps`` in turn (the last repeats); return its URL."""
        self.scripts[path] = Script(list(steps) or [{"status": 200}])
        return self.url + path

    def requests(self, path: str | None = None, method: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received
                    if (path is None or r.path == path) and (method is None or r.method == method)]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 20,
                 method: str | None = None) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = [r for r in self.received
                         if (path is None or r.path == path)
                         and (method is None or r.method == method)]
                if len(found) >= count or time.monotonic() > deadline:
                    return found
                self.lock.wait(0.05)

    def record(self, item: Received) -> None:
        with self.lock:
            self.received.append(item)
            self.lock.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: HookServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        self.server.record(Received(self.command, path, dict(self.headers.items()), body,
                                    time.time()))
        step = self.server.scripts[path].next()
        if step.get("sleep") and not self._sleep(step["sleep"]):
            self.server.dropped.append(path)
            return
        payload = step.get("body", b"ok")
        payload = payload.encode() if isinstance(payload, str) else payload
        self.send_response(step.get("status", 200))
        for name, value in step.get("headers", {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, noticing when the client closes the connection. False if it did."""
        import select

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.connection], [], [], 0.05)
            if ready and not self.connection.recv(1, 2):  # MSG_PEEK: b"" means closed
                return False
        return True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def start_hook(host: str = "127.0.0.1") -> HookServer:
    """A hook receiver serving on ``host`` (any loopback address), on a free port."""
    server = HookServer(host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def gaps(received: list[Received]) -> list[float]:
    """Seconds between one request and the next."""
    return [b.at - a.at for a, b in pairwise(received)]
