"""The benchmark's hook receiver: a gevent server in a process of its own, speaking just
enough HTTP/1.1 (keep-alive, Content-Length bodies) to cost little CPU per delivery.

Run as ``python -m ntq.bench.hook``; it prints its port on the first line of stdout.

- ``/hook/<run>`` answers 200 at once; ``/sleep/<run>?s=N`` answers after N seconds.
  Both record the delivery under ``<run>``: distinct task ids, first and last receipt,
  hooks in flight, and the enqueue-to-receipt latency when the body is ``{"t": <epoch>}``
  (the load generator stamps every task it sends).
- ``GET /_stats/<run>`` returns those figures as JSON (``?latencies=1`` adds every latency).

The listening socket sets ``TCP_NODELAY`` (inherited by accepted sockets): without it
Nagle and delayed ACKs stall keep-alive clients about 40 ms per request.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import gevent
import orjson
from gevent import socket as gsocket
from gevent.server import StreamServer


@dataclass
class RunStats:
    """What the receiver saw for one benchmark run."""

    received: int = 0
    ids: set[str] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    last_finish: float = 0.0
    in_flight: int = 0
    peak_in_flight: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def arrive(self, task_id: str, body: bytes) -> None:
        now = time.time()
        self.received += 1
        self.ids.add(task_id)
        self.first = self.first or now
        self.last = now
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        stamp = _stamp(body)
        if stamp is not None:
            self.latencies_ms.append((now - stamp) * 1000.0)

    def leave(self) -> None:
        self.in_flight -= 1
        self.last_finish = time.time()

    def summary(self, with_latencies: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "received": self.received,
            "unique": len(self.ids),
            "duplicates": self.received - len(self.ids),
            "first": self.first,
            "last": self.last,
            "last_finish": self.last_finish,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }
        if with_latencies:
            data["latencies_ms"] = self.latencies_ms
        return data


def _stamp(body: bytes) -> float | None:
    if not body.startswith(b'{"t":'):
        return None
    try:
        return float(orjson.loads(body)["t"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class Reader:
    """Reads HTTP/1.1 requests (Content-Length bodies) off one keep-alive connection."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.buffer = sock, b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def request(self) -> tuple[str, dict[str, str], bytes] | None:
        """(target, lower-cased headers, body), or None once the client has gone."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length") or 0)
        while len(self.buffer) < length:
            if not self._fill():
                return None
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return lines[0].split(" ")[1], headers, body


def response(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


OK = response("200 OK", b"ok")
NOT_FOUND = response("404 Not Found", b"")


class Receiver:
    """Answers every connection's requests in turn (a greenlet per connection)."""

    def __init__(self) -> None:
        self.runs: dict[str, RunStats] = defaultdict(RunStats)

    def handle(self, sock: Any, address: Any) -> None:
        reader = Reader(sock)
        try:
            while (request := reader.request()) is not None:
                sock.sendall(self.answer(*request))
        except OSError:
            pass  # the client went away
        finally:
            sock.close()

    def answer(self, target: str, headers: dict[str, str], body: bytes) -> bytes:
        path, _, query = target.partition("?")
        kind, _, run = path.strip("/").partition("/")
        params = parse_qs(query)
        if kind == "_stats":
            summary = self.runs[run].summary("latencies" in params)
            return response("200 OK", orjson.dumps(summary), "application/json")
        if kind not in ("hook", "sleep"):
            return NOT_FOUND
        stats = self.runs[run]
        stats.arrive(headers.get("ntq-task-id", ""), body)
        try:
            if kind == "sleep":
                gevent.sleep(float(params.get("s", ["0"])[0]))
        finally:
            stats.leave()
        return OK


def listener(port: int = 0) -> Any:
    """A loopback listening (gevent) socket with ``TCP_NODELAY`` set."""
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


def main() -> None:
    sock = listener()
    server = StreamServer(sock, Receiver().handle)
    print(sock.getsockname()[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
