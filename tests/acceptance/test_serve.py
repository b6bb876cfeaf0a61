"""``ntq serve`` with no URLs: embedded PostgreSQL and Redis, migrations, a first
application whose key works, delivery end to end, data kept across runs, a clean Ctrl-C,
and ``ntq apps`` working beside it."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import stack_env
from tests.support.hook import HookServer
from tests.support.procs import free_port


class Serve:
    """One ``ntq serve`` process and everything it printed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ntq", "serve"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.text = ""

    def read_until(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.text += chunk.decode(errors="replace")
        raise AssertionError(f"{pattern!r} not printed:\n{self.text}")

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def embedded_env(data_dir: Path, port: int) -> dict[str, str]:
    env = stack_env("unused", "unused", PORT=str(port), NTQ_DATA_DIR=str(data_dir))
    del env["DATABASE_URL"], env["REDIS_URL"]
    return env


def servers_of(data_dir: Path) -> list[psutil.Process]:
    """Running postgres and redis-server processes whose command line names the dir."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir.resolve()) in cmdline and proc.info["name"] in ("postgres",
                                                                          "redis-server"):
            found.append(proc)
    return found


@pytest.mark.timeout(300)
def test_serve_starts_everything_delivers_keeps_data_and_stops_cleanly(
        tmp_path: Path, hook: HookServer) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = embedded_env(data_dir, port)
    serve = Serve(env)
    try:
        key = serve.read_until(r"API key \(shown only once\): (ntq_\S+)").group(1)
        serve.read_until(rf"serving on http://127.0.0.1:{port}/")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}
        created = requests.post(base + "/", params={"url": hook.script("/serve")},
                                data=b"hello", headers=auth, timeout=10)
        assert created.status_code == 201, created.text
        (received,) = hook.wait_for(1, "/serve", timeout=30)
        assert received.body == b"hello"

        beside = subprocess.run([sys.executable, "-m", "ntq", "apps", "create", "second",
                                 "--json"], env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        second = json.loads(beside.stdout.strip().splitlines()[-1])
        assert requests.get(base + "/stats", headers={
            "Authorization": f"Bearer {second['api_key']}"}, timeout=10).status_code == 200
    finally:
        code = serve.interrupt()
    assert code == 0, serve.text
    deadline = time.monotonic() + 20
    while servers_of(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not servers_of(data_dir), "embedded servers left running after Ctrl-C"

    again = Serve(embedded_env(data_dir, port))
    try:
        again.read_until("serving on")
        assert "created application" not in again.text  # the data was kept
        task_id = created.json()["id"]
        kept = requests.get(f"http://127.0.0.1:{port}/tasks/{task_id}", headers=auth,
                            timeout=10)
        assert kept.status_code == 200
        assert kept.json()["status"] == "COMPLETED"
    finally:
        assert again.interrupt() == 0, again.text
