"""The embedded servers' keepers: processes starting at once share one server, which stops
when the last of them is gone, however it ended."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

ATTACH = """
import sys, time
from pathlib import Path
from ntq.embedded.servers import redis_url
print(redis_url(Path(sys.argv[1])), flush=True)
time.sleep(600)
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory outside pytest's base directory, which a concurrent pytest session
    may make private again while PostgreSQL's own user (under root) must enter it."""
    parent = Path(tempfile.mkdtemp(prefix="ntq-embedded-"))
    yield parent / "data"
    shutil.rmtree(parent, ignore_errors=True)


def keepers(data_dir: Path) -> list[psutil.Process]:
    """The running keeper processes of ``data_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            "ntq.embedded.servers" in cmdline
            and str(data_dir.resolve()) in cmdline
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    return found


def test_processes_starting_together_share_one_redis_that_stops_after_the_last(
    tmp_path: Path,
) -> None:
    users = [
        subprocess.Popen(
            [sys.executable, "-c", ATTACH, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    try:
        urls = {user.stdout.readline().strip() for user in users if user.stdout}
        assert len(urls) == 1, urls
        (url,) = urls
        server = psutil.Process(int(redis.Redis.from_url(url).info("server")["process_id"]))
        keeper = server.parent()
        assert keeper is not None
        assert keeper in keepers(tmp_path)
        for user in users[:-1]:
            os.kill(user.pid, signal.SIGKILL)
            user.wait()
        time.sleep(1)
        assert server.is_running()  # one user is left
        assert redis.Redis.from_url(url).ping()
        os.kill(users[-1].pid, signal.SIGKILL)
        users[-1].wait()
        psutil.wait_procs([keeper, server], timeout=20)
        assert not keeper.is_running()
        assert not server.is_running()
        assert not keepers(tmp_path)
    finally:
        for user in users:
            user.kill()
            user.wait()


def postmaster(data_dir: Path) -> psutil.Process:
    pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    return psutil.Process(pid)


def test_postgres_left_by_a_killed_keeper_is_adopted_and_stopped_by_the_next(
    data_dir: Path,
) -> None:
    first = subprocess.Popen(
        [sys.executable, "-c", ATTACH.replace("redis_url", "postgres_url"), str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("postgresql://")
        server = postmaster(data_dir)
        for keeper in keepers(data_dir):
            keeper.kill()  # the keeper dies with its user: PostgreSQL is left running
        first.kill()
        first.wait()
        time.sleep(1)
        assert server.is_running()
    finally:
        first.kill()
        first.wait()
    # The package's own count of users still names the dead keeper; it must not matter.
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from ntq.embedded.servers import postgres_url; "
            "print(postgres_url(Path(sys.argv[1])))",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert again.stdout.startswith("postgresql://"), again.stderr
    server.wait(30)
    psutil.wait_procs(keepers(data_dir), timeout=20)
    assert not keepers(data_dir)
