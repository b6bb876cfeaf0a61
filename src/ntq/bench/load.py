"""The benchmark's load generator: keep-alive HTTP/1.1 on raw gevent sockets, in a process
of its own so that it never competes with ntq's processes for the interpreter.

Run as ``python -m ntq.bench.load '<job as JSON>'`` (see :class:`Job`). It prints one JSON
object per line: ``{"progress": tasks_done, "errors": n}`` four times a second, then
``{"result": {...}}``. Every task body is ``{"t": <epoch seconds>}``, the time the task was
due to be sent, so the hook receiver can measure enqueue-to-receipt latency.

Closed loop (no ``rate``): each connection sends its next request as soon as the previous
answer arrives. Open loop (``rate``): request ``i`` is due at ``start + i / rate``; a late
request is stamped with its due time, so queueing in the generator counts as latency.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import gevent
import orjson
from gevent import socket

PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True)
class Job:
    """What to send: ``count`` tasks through ``connections`` keep-alive connections."""

    port: int
    key: str
    hook: str
    count: int
    connections: int
    host: str = "127.0.0.1"
    batch: int = 0  # 0: one task per POST /; otherwise arrays of this size to POST /tasks
    rate: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def _head(self) -> bytes:
        """Everything before the Content-Length value, built once."""
        target = "/tasks" if self.batch else "/?" + urlencode({"url": self.hook, **self.params})
        return (
            f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: "
        ).encode()

    def request(self, tasks: int, stamp: float) -> bytes:
        body = b'{"t":%.6f}' % stamp
        if self.batch:
            item = {
                "url": self.hook,
                "body": body.decode(),
                "content_type": "application/json",
                **self.params,
            }
            body = orjson.dumps([item] * tasks)
        return b"%s%d\r\n\r\n%s" % (self._head, len(body), body)


class Connection:
    """One keep-alive connection; ``call`` sends a request and returns the status code."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: Any = None
        self.buffer = b""

    def call(self, data: bytes) -> int:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.sendall(data)
            return self._response()
        except BaseException:
            self.close()
            raise

    def _response(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lowered = head.lower()
        status = int(head[9:12])
        marker = lowered.find(b"\r\ncontent-length:")
        length = int(lowered[marker + 17 :].split(b"\r\n", 1)[0]) if marker >= 0 else 0
        self.buffer = rest
        while len(self.buffer) < length:
            self._fill()
        self.buffer = self.buffer[length:]
        if b"\r\nconnection: close" in lowered:
            self.close()
        return status

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""


@dataclass
class State:
    """Shared by the connection greenlets (gevent switches only at I/O, so no locks)."""

    job: Job
    next_task: int = 0
    done: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    request_ms: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_done: float = 0.0

    def take(self) -> tuple[int, int] | None:
        """The next request's first task index and size, or None when all are taken."""
        if self.next_task >= self.job.count:
            return None
        index, size = self.next_task, min(self.job.batch or 1, self.job.count - self.next_task)
        self.next_task += size
        return index, size

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _due(state: State, index: int, wall0: float, mono0: float) -> float:
    """Sleep until task ``index`` is due (open loop); return its wall-clock stamp."""
    if state.job.rate is None:
        return time.time()
    offset = index / state.job.rate
    gevent.sleep(max(0.0, mono0 + offset - time.monotonic()))
    return wall0 + offset


def _connection_loop(state: State, wall0: float, mono0: float) -> None:
    conn = Connection(state.job.host, state.job.port)
    while (taken := state.take()) is not None:
        index, size = taken
        stamp = _due(state, index, wall0, mono0)
        state.first_send = state.first_send or time.time()
        started = time.monotonic()
        try:
            status = conn.call(state.job.request(size, stamp))
        except (OSError, ValueError) as exc:
            state.error(type(exc).__name__)
            continue
        state.request_ms.append((time.monotonic() - started) * 1000.0)
        if 200 <= status < 300:
            state.done += size
            state.last_done = time.time()
        else:
            state.error(str(status))
    conn.close()


def _report(state: State) -> None:
    while True:
        _emit({"progress": state.done, "errors": sum(state.errors.values())})
        gevent.sleep(PROGRESS_INTERVAL)


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max of ``values`` (nearest rank), rounded to 0.01."""
    ordered = sorted(values) or [0.0]

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": rank(1.0)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(job: Job) -> dict[str, Any]:
    """Send the job's load; return what happened."""
    state = State(job)
    cpu0 = _cpu_seconds()
    reporter = gevent.spawn(_report, state)
    wall0, mono0 = time.time(), time.monotonic()
    greenlets = [
        gevent.spawn(_connection_loop, state, wall0, mono0) for _ in range(job.connections)
    ]
    gevent.joinall(greenlets, raise_error=True)
    seconds = time.monotonic() - mono0
    reporter.kill()
    cpu = _cpu_seconds() - cpu0
    return {
        "tasks": state.done,
        "requests": len(state.request_ms),
        "errors": state.errors,
        "seconds": round(seconds, 3),
        "first_send": state.first_send,
        "last_done": state.last_done,
        "request_ms": percentiles(state.request_ms),
        "cpu_seconds": round(cpu, 3),
        "cpu_percent": round(100.0 * cpu / max(seconds, 1e-6), 1),
    }


def main() -> None:
    job = Job(**orjson.loads(sys.argv[1]))
    _emit({"result": run(job)})


if __name__ == "__main__":
    main()
