"""ntq as a user installs it: a wheel built from the sdist (``python -m build``), installed
with its dependencies from the package index into a new virtual environment, run from an
empty directory; and the repository's Procfile run by the real honcho against that
installation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy import text

from ntq.store.db import make_engine
from tests.conftest import _fresh_database, stack_env
from tests.support.hook import HookServer
from tests.support.procs import free_port, interrupt_group
from tests.support.tasks import wait_until

REPOSITORY = Path(__file__).resolve().parents[2]


class Console:
    """A command started as from a terminal (its own process group), its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def read_until(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        """The first match of ``pattern`` in the output, failing if the command exits or
        ``timeout`` seconds pass without it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not printed:\n{self.text()}")

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it to the foreground process group; the exit code."""
        return interrupt_group(self.proc)


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a command to completion, asserting exit 0; its output."""
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment holding ntq's wheel (built from its sdist) and the
    dependencies it declares, from the package index: no extra, no source checkout."""
    root = tmp_path_factory.mktemp("package")
    env = installed_env(dict(os.environ))
    run([sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(REPOSITORY)], env, root)
    (wheel,) = (root / "dist").glob("ntq-*.whl")
    run([sys.executable, "-m", "venv", str(root / "venv")], env, root)
    run([str(root / "venv" / "bin" / "pip"), "install", str(wheel)], env, root)
    imported = run(
        [str(root / "venv" / "bin" / "python"), "-c", "import ntq; print(ntq.__file__)"], env, root
    )
    assert "site-packages" in imported, imported
    return root / "venv"


def installed_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without PYTHONPATH: only the installed package may be imported."""
    return {name: value for name, value in env.items() if name != "PYTHONPATH"}


@pytest.fixture
def fresh_url(database_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    yield from _fresh_database(database_url)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """The working directory: nothing of ntq's checkout in or above it."""
    path = tmp_path / "empty"
    path.mkdir()
    return path


@pytest.mark.timeout(300)
def test_installed_serve_without_server_urls_names_the_embedded_extra(
    venv: Path, empty_dir: Path
) -> None:
    env = installed_env(stack_env("unused", "unused", PORT=str(free_port())))
    del env["DATABASE_URL"], env["REDIS_URL"]
    serve = Console(
        [str(venv / "bin" / "ntq"), "serve"], env, empty_dir, empty_dir.parent / "serve.log"
    )
    wait_until(
        lambda: serve.proc.poll() is not None or "serving on" in serve.text(), 120, interval=0.2
    )
    if serve.proc.poll() is None:
        serve.interrupt()
        pytest.fail(f"ntq serve ran without DATABASE_URL and REDIS_URL:\n{serve.text()}")
    assert serve.proc.returncode != 0, serve.text()
    assert "ntq[embedded]" in serve.text()


@pytest.mark.timeout(300)
def test_installed_wheel_migrates_serves_and_delivers_from_an_empty_directory(
    venv: Path, empty_dir: Path, fresh_url: str, redis_url: str, hook: HookServer
) -> None:
    port = free_port()
    env = installed_env(stack_env(fresh_url, redis_url, PORT=str(port)))
    run([str(venv / "bin" / "ntq"), "migrate"], env, empty_dir)
    engine = make_engine(fresh_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()

    serve = Console(
        [str(venv / "bin" / "ntq"), "serve"], env, empty_dir, empty_dir.parent / "serve.log"
    )
    try:
        key = serve.read_until(r"API key \(shown only once\): (ntq_\S+)").group(1)
        serve.read_until(rf"serving on http://127.0.0.1:{port}/")
        created = requests.post(
            f"http://127.0.0.1:{port}/",
            params={"url": hook.script("/package")},
            data=b"from a wheel",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        reference = requests.get(f"http://127.0.0.1:{port}/docs", timeout=10)
        assert reference.status_code == 200, reference.text
        assert ".method" in reference.text  # the stylesheet shipped in the package
        (received,) = hook.wait_for(1, "/package", timeout=30)
        assert received.body == b"from a wheel"
    finally:
        code = serve.interrupt()
    assert code == 0, serve.text()


@pytest.mark.timeout(300)
def test_procfile_under_honcho_delivers_and_stops_every_process(
    venv: Path, empty_dir: Path, fresh_url: str, redis_url: str, hook: HookServer
) -> None:
    port = free_port()
    env = installed_env(
        stack_env(fresh_url, redis_url, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    )
    honcho = [sys.executable, "-m", "honcho", "-f", str(REPOSITORY / "Procfile")]
    # README, Deploying: migrations first (honcho would stop everything when `release`
    # exits), then the long-running processes.
    run([*honcho, "run", "ntq", "migrate"], env, empty_dir)
    created_app = run(
        [str(venv / "bin" / "ntq"), "apps", "create", "procfile", "--json"], env, empty_dir
    )
    api_key = json.loads(created_app.strip().splitlines()[-1])["api_key"]

    started = Console(
        [*honcho, "start", "-p", str(port), "web", "worker", "requeue"],
        env,
        empty_dir,
        empty_dir.parent / "honcho.log",
    )
    try:
        started.read_until(r"worker\.start")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _answers(base + "/healthz") and time.monotonic() < deadline:
            time.sleep(0.1)
        created = requests.post(
            base + "/",
            params={"url": hook.script("/procfile")},
            data=b"from the Procfile",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        (received,) = hook.wait_for(1, "/procfile", timeout=30)
        assert received.body == b"from the Procfile"
        processes = psutil.Process(started.proc.pid).children(recursive=True)
        running = " ".join(" ".join(process.cmdline()) for process in processes)
        assert all(f"ntq {name}" in running for name in ("web", "worker", "requeue")), running
        assert ("0.0.0.0", port) in _listening()  # reachable from a platform's router
    finally:
        started.interrupt()
    _, alive = psutil.wait_procs(processes, timeout=15)
    assert not alive, f"left running: {alive}\n{started.text()}"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _listening() -> set[tuple[str, int]]:
    """The (address, port) of every listening TCP socket on this machine."""
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections("tcp")
        # laddr is () only for a Unix socket without a name: never a TCP one.
        if conn.status == psutil.CONN_LISTEN and conn.laddr
    }
