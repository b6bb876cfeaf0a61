"""Process lifetimes: children that die with their parent, and servers that run exactly as
long as some process uses them.

A server is owned by a small *keeper* process, one per server and data directory, in a
session of its own (closing a terminal does not reach it). Every process that uses the
server holds a shared ``flock`` on the keeper's ``.users`` file for as long as it lives; the
kernel releases it at any death, SIGKILL included, and children handed the descriptor hold
it too. The keeper stops its server as soon as it can take that lock exclusively, which is
also what makes a process arriving meanwhile wait, then start a new keeper.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
START_TIMEOUT = 180.0  # initdb on a slow disk, then the server's own start


class StartError(RuntimeError):
    """A kept server could not be started."""


@dataclass(frozen=True)
class Running:
    """A started server: where to reach it, and how to stop it."""

    url: str
    stop: Callable[[], None]


@dataclass(frozen=True)
class Files:
    """The files through which the keeper of server ``name`` and its users meet."""

    root: Path
    name: str

    def path(self, suffix: str) -> Path:
        return self.root / f"{self.name}.{suffix}"


_held: list[tuple[int, Files]] = []


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` after which the child gets ``sig`` when this process dies, however
    it dies (Linux's parent-death signal; elsewhere only a parent already gone is seen)."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

    def arm() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


def held_fds() -> tuple[int, ...]:
    """The descriptors that keep this process's servers running: a child given them (as
    ``pass_fds``) keeps the servers up until it exits too."""
    return tuple(fd for fd, _ in _held)


def release(timeout: float = 60) -> None:
    """Stop holding this process's servers, then wait (at most ``timeout`` seconds) for
    their keepers to exit, as they do when no other process uses them: their data may then
    be removed."""
    deadline = time.monotonic() + timeout
    while _held:
        fd, files = _held.pop()
        os.close(fd)
        while not _free(files.path("lock")) and time.monotonic() < deadline:
            time.sleep(0.05)


def attach(name: str, root: Path, keeper: list[str]) -> str:
    """The URL of server ``name`` kept in ``root``, starting its keeper (``keeper`` is the
    keeper's command line) when none runs; the server stays up while this process lives."""
    files = Files(root, name)
    root.mkdir(parents=True, exist_ok=True)
    users = os.open(files.path("users"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(users, fcntl.LOCK_SH)  # waits while a keeper is stopping its server
        url = _wait_for_url(files, keeper)
    except BaseException:
        os.close(users)
        raise
    _held.append((users, files))
    return url


def _wait_for_url(files: Files, argv: list[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    spawned: subprocess.Popen[bytes] | None = None
    while (url := _published(files.path("url"))) is None:
        if spawned is not None and spawned.poll():
            raise StartError(_failure(files))
        # Holding a user's lock, no keeper can stop now: a missing one must be started.
        if (spawned is None or spawned.poll() is not None) and _free(files.path("lock")):
            spawned = _spawn(argv, files.path("log"))
        if time.monotonic() > deadline:
            raise StartError(
                f"the embedded {files.name} did not start within "
                f"{START_TIMEOUT:.0f} s; see {files.path('log')}"
            )
        time.sleep(0.05)
    return url


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _failure(files: Files) -> str:
    lines = files.path("log").read_text(errors="replace").strip().splitlines()
    return (
        f"could not start the embedded {files.name}: {lines[-1] if lines else 'no output'}"
        f" (see {files.path('log')})"
    )


def _free(path: Path) -> bool:
    """Whether nobody holds a lock on ``path`` (a missing file is free)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        return _lockable(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _lockable(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _published(path: Path) -> str | None:
    """The URL a live keeper published (a keeper holds a lock on its file until it stops;
    a file nobody locks was left by a keeper that died)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _lockable(fd, fcntl.LOCK_SH):
            return None
        return os.read(fd, 4096).decode().strip() or None
    finally:
        os.close(fd)


def keep(name: str, root: Path, start: Callable[[], Running]) -> int:
    """The keeper: start the server, publish its URL, and stop it once no process uses it
    (or on SIGTERM, SIGINT or SIGHUP). Returns 0 at once if another keeper runs."""
    files = Files(root, name)
    lock = os.open(files.path("lock"), os.O_RDWR | os.O_CREAT, 0o600)
    # A user checking whether a keeper runs holds the lock for an instant: try for a while.
    for _ in range(20):
        if _lockable(lock, fcntl.LOCK_EX):
            break
        time.sleep(0.05)
    else:
        return 0  # another keeper runs
    files.path("url").unlink(missing_ok=True)
    stop = _stop_signals()
    running = start()
    published = _publish(files.path("url"), running.url)
    users = os.open(files.path("users"), os.O_RDWR | os.O_CREAT, 0o600)
    while not stop and not _lockable(users, fcntl.LOCK_EX):
        time.sleep(0.2)
    files.path("url").unlink(missing_ok=True)
    os.close(published)
    running.stop()
    return 0


def _publish(path: Path, url: str) -> int:
    """Write ``url`` to ``path`` under a lock held until the returned descriptor closes."""
    staged = path.with_suffix(".new")
    fd = os.open(staged, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, url.encode())
    os.replace(staged, path)
    return fd


def _stop_signals() -> list[int]:
    """A list that becomes truthy on SIGTERM, SIGINT or SIGHUP."""
    flag: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: flag.append(signum))
    return flag
