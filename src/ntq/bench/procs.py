"""The benchmark's child processes, and what ``/proc`` says about their CPU and memory."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 15.0


class ScenarioFailed(RuntimeError):
    """A process the scenario needs did not start, or exited."""


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """CPU time of the process, including children it has reaped."""
    fields = _stat(pid)
    if not fields:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The process and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def parent(pid: int) -> int:
    """The parent's process id; 0 when the process is not visible here."""
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def peak_rss_mb(pid: int) -> float:
    """The process's resident-memory high-water mark (``VmHWM``), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU used by groups of processes between :meth:`start` and :meth:`read`, as percent
    of one core; ``machine`` is the whole machine's busy share, as percent of all cores."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.began = 0.0
        self.ticks = (0, 0)

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()
        }

    def start(self) -> None:
        self.before, self.began, self.ticks = self._sample(), time.monotonic(), machine_ticks()

    def read(self) -> dict[str, float]:
        after, seconds = self._sample(), max(time.monotonic() - self.began, 1e-6)
        busy, total = machine_ticks()
        usage = {
            name: round(
                100.0
                * sum(cpu - self.before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
                / seconds,
                1,
            )
            for name, pids in after.items()
        }
        usage["machine"] = round(100.0 * (busy - self.ticks[0]) / max(total - self.ticks[1], 1), 1)
        return usage


class Child:
    """One child process in a session of its own, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, stdout: int | None = None) -> Child:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=stdout or out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pids(self) -> list[int]:
        return children(self.pid) if self.alive else []

    def stop(self) -> None:
        """SIGTERM to the whole process group, then SIGKILL if it lingers."""
        if self.popen is None or not self.alive:
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if not self.alive or time.monotonic() > deadline:
                raise ScenarioFailed(f"{self.name} did not start; see {self.log}")
            time.sleep(0.05)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(port: int, path: str, timeout: float = 10.0) -> Any:
    """GET a JSON document from a local server."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return orjson.loads(response.read())
    finally:
        conn.close()


def wait_http(child: Child, port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_json(port, path, timeout=1.0)
            return
        except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
            if not child.alive or time.monotonic() > deadline:
                raise ScenarioFailed(f"{child.name} did not answer; see {child.log}") from None
            time.sleep(0.05)


class LoadRun:
    """A running load generator; its progress lines are read by a thread."""

    def __init__(self, job: dict[str, Any], env: dict[str, str], log: Path) -> None:
        argv = python_module("ntq.bench.load", orjson.dumps(job).decode())
        self.child = Child("generator", argv, env, log).start(stdout=subprocess.PIPE)
        self.progress = 0
        self.result: dict[str, Any] | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.child.popen is not None
        assert self.child.popen.stdout is not None
        for line in self.child.popen.stdout:
            message = orjson.loads(line)
            self.progress = message.get("progress", self.progress)
            self.result = message.get("result", self.result)

    @property
    def tasks(self) -> int:
        """Tasks enqueued so far (all of them once the generator has finished)."""
        return int(self.result["tasks"]) if self.result is not None else self.progress

    @property
    def done(self) -> bool:
        return not self.reader.is_alive()

    def wait(self) -> dict[str, Any]:
        self.reader.join()
        assert self.child.popen is not None
        self.child.popen.wait()
        if self.result is None:
            raise ScenarioFailed(f"the load generator failed; see {self.child.log}")
        return self.result
