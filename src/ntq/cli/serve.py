"""``ntq serve``: the whole service in one command.

Resolves the servers (embedded ones when no URLs are given), migrates, creates a first
application on first start, then runs ``web``, ``worker`` and ``requeue`` as child
processes, restarting any that dies once the service is up. Ctrl-C, SIGTERM or SIGHUP (a
closed terminal) stops them all cleanly; if ``ntq serve`` itself is killed, its children get
SIGTERM from the kernel, and the embedded servers stop once they have all exited.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ntq.config import Settings
from ntq.embedded.lifetime import die_with_parent, held_fds
from ntq.store import apps
from ntq.store.db import make_engine
from ntq.store.migrate import upgrade
from ntq.urlsafety import AddressPolicy

STOP_TIMEOUT = 40.0
START_TIMEOUT = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def serve(settings: Settings, host: str, listener: socket.socket) -> int:
    """Run the service on ``listener`` until stopped; 0 after a clean stop."""
    assert settings.database_url
    assert settings.redis_url
    upgrade(settings.database_url)
    _first_app(settings.database_url)
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "PORT": str(settings.port),
    }
    children = _children(host, listener)
    stop = _stop_flag()
    for child in children:
        _start(child, env)
    if not _wait_until_answering(listener, children, stop):
        _stop_all(children)
        return 0 if stop else 1
    print(
        f"ntq is serving on http://{host}:{settings.port}/ "
        f"({AddressPolicy.from_settings(settings).describe()}). Ctrl-C stops.",
        flush=True,
    )
    while not stop:
        time.sleep(0.5)
        for child in children:
            if child.exited and not stop:
                assert child.proc is not None
                print(
                    f"ntq: {child.name} exited ({child.proc.returncode}); restarting",
                    file=sys.stderr,
                    flush=True,
                )
                _start(child, env)
    return _stop_all(children)


def _children(host: str, listener: socket.socket) -> list[Child]:
    """web, worker and requeue; each holds the embedded servers' locks (they stay up until
    the last child has exited), the web also the listening socket (kept across restarts)."""
    held = held_fds()
    web = ["web", "--host", host, "--fd", str(listener.fileno())]
    return [
        Child(name, [sys.executable, "-m", "ntq", *argv], fds)
        for name, argv, fds in (
            ("web", web, (listener.fileno(), *held)),
            ("worker", ["worker"], held),
            ("requeue", ["requeue"], held),
        )
    ]


def _wait_until_answering(listener: socket.socket, children: list[Child], stop: list[int]) -> bool:
    """Whether the web answered HTTP on ``listener`` (this process holds the socket, so
    only its own web can), before a child exited, a stop signal or the timeout."""
    host, port = listener.getsockname()[:2]
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    deadline = time.monotonic() + START_TIMEOUT
    while not stop:
        if _answers(address, port):
            return True
        failed = [child for child in children if child.exited]
        if failed or time.monotonic() > deadline:
            what = (
                f"{failed[0].name} exited before the web answered"
                if failed
                else f"the web did not answer within {START_TIMEOUT:.0f} s"
            )
            print(f"ntq: {what}; stopping", file=sys.stderr, flush=True)
            return False
        time.sleep(0.1)
    return False


def _answers(address: str, port: int) -> bool:
    conn = http.client.HTTPConnection(address, port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _stop_flag() -> list[int]:
    """A list that becomes truthy on SIGINT, SIGTERM or SIGHUP."""
    flag: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            _leave_terminal()
        flag.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    return flag


def _leave_terminal() -> None:
    """The terminal is gone: what is left to say goes to /dev/null instead of failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
        os.dup2(devnull, fd)
    os.close(devnull)


def _start(child: Child, env: dict[str, str]) -> None:
    # Space out restarts of a child that keeps crashing.
    child.restarts = [t for t in child.restarts if t > time.monotonic() - 60]
    if len(child.restarts) >= 5:
        time.sleep(5)
    child.restarts.append(time.monotonic())
    # Own process group: Ctrl-C and a terminal's hangup reach only ntq serve, which then
    # stops the children; the kernel's SIGTERM reaches them if ntq serve is killed.
    child.proc = subprocess.Popen(
        child.argv, env=env, process_group=0, pass_fds=child.fds, preexec_fn=die_with_parent()
    )


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
            os.killpg(child.proc.pid, signal.SIGKILL)  # the web's workers too
            child.proc.wait()
    return 0


def _first_app(database_url: str) -> None:
    """On first start, create an application and print its key (shown only once)."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        if apps.list_all(conn):
            print(
                "ntq: API keys are shown only once; make another with "
                "`ntq apps add-key NAME` or `ntq apps create NAME`.",
                flush=True,
            )
        else:
            creds = apps.create(conn, "default")
            print(
                f"ntq: created application 'default'\n"
                f"  API key (shown only once): {creds.api_key}\n"
                f"  Signing secret: {creds.signing_secret}",
                flush=True,
            )
    engine.dispose()
