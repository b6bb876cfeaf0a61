"""``ntq serve`` with no URLs: embedded PostgreSQL and Redis, migrations, a first
application whose key works, delivery end to end, data kept across runs, a clean Ctrl-C,
and ``ntq apps`` working beside it; nothing left running after a closed terminal, SIGTERM
or SIGKILL; a taken port refused at once by ``ntq serve`` and ``ntq web``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import stack_env
from tests.support.hook import HookServer
from tests.support.procs import Stack, free_port, interrupt_group


class Serve:
    """One ``ntq serve`` process and everything it printed."""

    def __init__(self, env: dict[str, str], terminal: bool = False) -> None:
        """With ``terminal``, ``ntq serve`` runs in a terminal of its own (a pseudo-terminal
        whose session it leads), as from a shell in a terminal window."""
        argv = [sys.executable, "-m", "ntq", "serve"]
        self.terminal: int | None = None
        if terminal:
            self.terminal, tty = pty.openpty()
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=tty,
                stdout=tty,
                stderr=tty,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
            os.close(tty)
            self.output = self.terminal
        else:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert self.proc.stdout is not None
            self.output = self.proc.stdout.fileno()
        self.text = ""

    def read_until(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            ready, _, _ = select.select([self.output], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.output, 65536)
                except OSError:  # a terminal whose every user has gone
                    break
                if not chunk:
                    break
                self.text += chunk.decode(errors="replace")
        raise AssertionError(f"{pattern!r} not printed:\n{self.text}")

    def close_terminal(self) -> None:
        """Close the terminal window: the kernel hangs up ``ntq serve``'s session."""
        assert self.terminal is not None
        os.close(self.terminal)

    def kill(self) -> None:
        """SIGKILL whatever is left of ``ntq serve`` (not its children in other groups)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it to the foreground process group."""
        return interrupt_group(self.proc)


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An ``NTQ_DATA_DIR`` outside pytest's base directory: as root, PostgreSQL runs as
    another user, who must be able to enter every parent, and a concurrent pytest session
    may make that base private again at any moment."""
    parent = Path(tempfile.mkdtemp(prefix="ntq-serve-"))
    yield parent / "data"
    shutil.rmtree(parent, ignore_errors=True)


def embedded_env(data_dir: Path, port: int) -> dict[str, str]:
    env = stack_env("unused", "unused", PORT=str(port), NTQ_DATA_DIR=str(data_dir))
    del env["DATABASE_URL"], env["REDIS_URL"]
    return env


def servers_of(data_dir: Path) -> set[psutil.Process]:
    """The processes whose command line names ``data_dir`` (the embedded servers' keepers,
    the postmaster), with all their descendants (redis-server, PostgreSQL's backends)."""
    found: set[psutil.Process] = set()
    for proc in psutil.process_iter(["cmdline"]):
        if str(data_dir.resolve()) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                found |= {proc, *proc.children(recursive=True)}
    return {proc for proc in found if alive(proc)}


def tree_of(serve: Serve, data_dir: Path) -> set[psutil.Process]:
    """``ntq serve``, every descendant of it (web master and workers, worker, requeue) and
    the embedded servers with theirs."""
    root = psutil.Process(serve.proc.pid)
    return {root, *root.children(recursive=True), *servers_of(data_dir)}


def whole_tree(serve: Serve, data_dir: Path) -> set[psutil.Process]:
    """``tree_of`` once every process is up: serve, the web's master and its two workers,
    worker, requeue, PostgreSQL and Redis."""
    deadline = time.monotonic() + 30
    while True:
        procs = tree_of(serve, data_dir)
        names = sorted(proc.name() for proc in procs)
        complete = {"postgres", "redis-server"} <= set(names) and sum(
            "python" in name for name in names
        ) >= 6
        if complete or time.monotonic() > deadline:
            assert complete, names
            return procs
        time.sleep(0.2)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_running(procs: set[psutil.Process], timeout: float) -> list[str]:
    """Those of ``procs`` still running after ``timeout`` seconds, described."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if alive(proc):
                left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
    return left


def fast_shutdowns(data_dir: Path) -> int:
    """How often the embedded PostgreSQL logged a completed fast shutdown."""
    log = data_dir / "postgres" / "log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return min(
        text.count("received fast shutdown request"), text.count("database system is shut down")
    )


@pytest.mark.timeout(300)
def test_serve_starts_everything_delivers_keeps_data_and_stops_cleanly(
    data_dir: Path, hook: HookServer
) -> None:
    port = free_port()
    env = embedded_env(data_dir, port)
    serve = Serve(env)
    try:
        key = serve.read_until(r"API key \(shown only once\): (ntq_\S+)").group(1)
        serve.read_until(rf"serving on http://127.0.0.1:{port}/")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}
        created = requests.post(
            base + "/",
            params={"url": hook.script("/serve")},
            data=b"hello",
            headers=auth,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        (received,) = hook.wait_for(1, "/serve", timeout=30)
        assert received.body == b"hello"

        beside = subprocess.run(
            [sys.executable, "-m", "ntq", "apps", "create", "second", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        second = json.loads(beside.stdout.strip().splitlines()[-1])
        assert (
            requests.get(
                base + "/stats",
                headers={"Authorization": f"Bearer {second['api_key']}"},
                timeout=10,
            ).status_code
            == 200
        )
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
        kept = requests.get(f"http://127.0.0.1:{port}/tasks/{task_id}", headers=auth, timeout=10)
        assert kept.status_code == 200
        assert kept.json()["status"] == "COMPLETED"
    finally:
        assert again.interrupt() == 0, again.text


def deliver(port: int, key: str, hook: HookServer, path: str) -> None:
    """Enqueue a task on the ntq at ``port`` and see the hook receive it."""
    created = requests.post(
        f"http://127.0.0.1:{port}/",
        params={"url": hook.script(path)},
        data=b"again",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    (received,) = hook.wait_for(1, path, timeout=30)
    assert received.body == b"again"


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "sig",
    [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL],
    ids=["terminal_closed", "sigterm", "sigkill"],
)
def test_serve_ended_by_a_signal_leaves_nothing_running_and_starts_again_cleanly(
    sig: signal.Signals, data_dir: Path, hook: HookServer
) -> None:
    port = free_port()
    first = Serve(embedded_env(data_dir, port), terminal=sig == signal.SIGHUP)
    procs: set[psutil.Process] = set()
    try:
        key = first.read_until(r"API key \(shown only once\): (ntq_\S+)").group(1)
        first.read_until("serving on")
        procs = whole_tree(first, data_dir)
        if sig == signal.SIGHUP:
            first.close_terminal()  # the kernel's SIGHUP, and a terminal that takes no output
        else:
            os.kill(first.proc.pid, sig)
        assert not still_running(procs, timeout=60), first.text
        assert fast_shutdowns(data_dir) == 1  # PostgreSQL stopped, not killed
    finally:
        first.kill()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    again = Serve(embedded_env(data_dir, port))
    try:
        again.read_until("serving on")
        deliver(port, key, hook, "/again")
        procs = tree_of(again, data_dir)
    finally:
        code = again.interrupt()
    assert code == 0, again.text
    assert not still_running(procs, timeout=60), again.text
    assert fast_shutdowns(data_dir) == 2


def run_ntq(command: str, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "ntq", command], env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


def assert_refused(code: int, output: str, port: int) -> None:
    assert code != 0, output
    assert f"port {port}" in output, output
    assert "--port N" in output, output
    assert "PORT=N" in output, output
    assert "serving" not in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("command", ["serve", "web"])
def test_a_port_taken_by_another_program_is_refused_at_once(
    command: str, migrated: str, redis_url: str, hook: HookServer
) -> None:
    # The hook receiver answers every GET with 200, /healthz included.
    port = hook.server_address[1]
    code, output = run_ntq(command, stack_env(migrated, redis_url, PORT=str(port)))
    assert_refused(code, output, port)


@pytest.mark.parametrize("command", ["serve", "web"])
def test_a_port_taken_by_a_leftover_ntq_is_refused_at_once(command: str, stack: Stack) -> None:
    stack.web()
    code, output = run_ntq(command, {**stack.env, "PORT": str(stack.port)})
    assert_refused(code, output, stack.port)


def test_web_logs_once_where_it_listens(stack: Stack) -> None:
    web = stack.web()
    events = [json.loads(line) for line in web.output().splitlines() if line.startswith("{")]
    listening = [event for event in events if event["event"] == "web.listening"]
    assert [event["url"] for event in listening] == [stack.url], web.output()
