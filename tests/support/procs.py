"""Launch the real ntq processes (and private Redis servers) for acceptance tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from ntq.embedded.servers import redis_binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int | None:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.alive:
            self.signal(signal.SIGTERM)
            if self.wait(15) is None:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def interrupt_group(popen: subprocess.Popen[Any]) -> int:
    """Ctrl-C, as a terminal sends it to the foreground process group (the process's own,
    started with ``start_new_session``); its exit code. SIGKILL if it outlives a minute."""
    os.killpg(popen.pid, signal.SIGINT)
    try:
        return popen.wait(60)
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)


class Stack:
    """ntq's processes against one database and Redis, as a deployment would run them."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, *args: str, **env: str) -> Proc:
        name = f"{args[0]}-{len(self.procs)}.log"
        proc = Proc(
            [sys.executable, "-m", "ntq", *args], {**self.env, **env}, self.logdir / name
        ).start()
        self.procs.append(proc)
        return proc

    def web(self, **env: str) -> Proc:
        proc = self.spawn("web", "--port", str(self.port), "--workers", "1", **env)
        wait_http(self.url + "/healthz", proc)
        return proc

    def worker(self, *args: str, **env: str) -> Proc:
        proc = self.spawn("worker", *args, **env)
        wait_log(proc, "worker.start")
        return proc

    def requeue(self, **env: str) -> Proc:
        proc = self.spawn("requeue", **env)
        wait_log(proc, "requeue.start")
        return proc

    def stop(self) -> None:
        """SIGTERM every process at once, then wait for each (killing stragglers)."""
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()}" for p in self.procs)


def wait_http(url: str, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"process exited:\n{proc.output()}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer:\n{proc.output()}")


def wait_log(proc: Proc, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.output():
            return
        if not proc.alive:
            raise RuntimeError(f"process exited:\n{proc.output()}")
        time.sleep(0.05)
    raise RuntimeError(f"{text!r} not logged:\n{proc.output()}")


class RedisServer:
    """A private redis-server a test may stop, restart and flush at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(redis_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Api:
    """A small client for ntq's HTTP API, authenticated as one application."""

    def __init__(self, base: str, key: str | None) -> None:
        self.base = base
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def enqueue(
        self,
        url: str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> requests.Response:
        sent = dict(headers or {})
        if content_type:
            sent["Content-Type"] = content_type
        return self.http.post(
            self.base + "/", params={"url": url, **params}, data=body, headers=sent, timeout=10
        )

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/tasks/{task_id}", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def wait_status(self, task_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(task_id)
            if task["status"] in statuses or time.monotonic() > deadline:
                return task
            time.sleep(0.05)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=kwargs.pop("timeout", 10), **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.post(self.base + path, timeout=kwargs.pop("timeout", 10), **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.delete(self.base + path, timeout=kwargs.pop("timeout", 10), **kwargs)
