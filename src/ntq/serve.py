"""``ntq serve``: the whole service in one command.

Resolves the servers (embedded ones when no URLs are given), migrates, creates a first
application on first start, then runs ``web``, ``worker`` and ``requeue`` as child
processes, restarting any that dies. Ctrl-C (or SIGTERM) stops them all cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ntq import apps
from ntq.config import Settings
from ntq.db import make_engine
from ntq.migrate import upgrade
from ntq.urlsafety import AddressPolicy

STOP_TIMEOUT = 40.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


def serve(settings: Settings, host: str) -> int:
    assert settings.database_url
    assert settings.redis_url
    upgrade(settings.database_url)
    _first_app(settings.database_url)
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "REDIS_URL": settings.redis_url, "PORT": str(settings.port)}
    children = [Child(name, [sys.executable, "-m", "ntq", *argv]) for name, argv in (
        ("web", ["web", "--host", host]), ("worker", ["worker"]), ("requeue", ["requeue"]))]
    stop = _stop_flag()
    for child in children:
        _start(child, env)
    _wait_until_listening(host, settings.port, stop)
    print(f"ntq is serving on http://{host}:{settings.port}/ "
          f"({AddressPolicy.from_settings(settings).describe()}). Ctrl-C stops.", flush=True)
    while not stop:
        time.sleep(0.5)
        for child in children:
            if child.proc is not None and child.proc.poll() is not None and not stop:
                print(f"ntq: {child.name} exited ({child.proc.returncode}); restarting",
                      file=sys.stderr, flush=True)
                _start(child, env)
    return _stop_all(children)


def _wait_until_listening(host: str, port: int, stop: list[int]) -> None:
    """Return once the web answers (so the printed URL works), or after 60 s."""
    address = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)


def _stop_flag() -> list[int]:
    """A list that becomes truthy on SIGINT or SIGTERM."""
    flag: list[int] = []

    def handler(signum: int, frame: object) -> None:
        flag.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return flag


def _start(child: Child, env: dict[str, str]) -> None:
    # Space out restarts of a child that keeps crashing.
    child.restarts = [t for t in child.restarts if t > time.monotonic() - 60]
    if len(child.restarts) >= 5:
        time.sleep(5)
    child.restarts.append(time.monotonic())
    # Own process group: Ctrl-C reaches only ntq serve, which then stops the children.
    child.proc = subprocess.Popen(child.argv, env=env, process_group=0)


def _stop_all(children: list[Child]) -> int:
    print("ntq: stopping", file=sys.stderr, flush=True)
    for child in children:
        if child.proc and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
    return 0


def _first_app(database_url: str) -> None:
    """On first start, create an application and print its key (shown only once)."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        if apps.list_all(conn):
            print("ntq: API keys are shown only once; make another with "
                  "`ntq apps add-key NAME` or `ntq apps create NAME`.", flush=True)
        else:
            creds = apps.create(conn, "default")
            print(f"ntq: created application 'default'\n"
                  f"  API key (shown only once): {creds.api_key}\n"
                  f"  Signing secret: {creds.signing_secret}", flush=True)
    engine.dispose()
