"""The stack under test: ntq's processes as ``ntq serve`` runs them, the hook receiver,
and the benchmark's own application in the database."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, text

from ntq.bench.procs import (
    Child,
    CpuMeter,
    ScenarioFailed,
    children,
    free_port,
    parent,
    peak_rss_mb,
    python_module,
    wait_http,
)
from ntq.config import Settings
from ntq.store import apps
from ntq.store.db import make_engine
from ntq.store.migrate import upgrade


def server_group(pid: int | None) -> Callable[[], list[int]]:
    """The server's processes (none when it is not on this machine)."""
    return (lambda: children(pid)) if pid else list


@dataclass
class Memory:
    """Peak resident memory seen so far, in MiB."""

    web_process: float = 0.0
    web_total: float = 0.0
    worker: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "web_process_peak_rss_mb": round(self.web_process, 1),
            "web_total_peak_rss_mb": round(self.web_total, 1),
            "worker_peak_rss_mb": round(self.worker, 1),
        }


@dataclass
class Stack:
    """ntq's web (and, while delivering, worker and requeue) plus the hook receiver."""

    settings: Settings
    workdir: Path
    web_workers: int
    port: int = field(default_factory=free_port)
    channel: str = field(default_factory=lambda: f"ntq-bench-{secrets.token_hex(4)}")
    app_id: uuid.UUID | None = None
    api_key: str = ""
    receiver_port: int = 0
    children: dict[str, Child] = field(default_factory=dict)
    memory: Memory = field(default_factory=Memory)
    engine: Engine | None = None
    server_pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        assert self.settings.database_url
        assert self.settings.redis_url
        return {
            **os.environ,
            "DATABASE_URL": self.settings.database_url,
            "REDIS_URL": self.settings.redis_url,
            "NTQ_DATA_DIR": str(self.settings.data_dir),
            "PORT": str(self.port),
            "NTQ_ALLOW_PRIVATE_NETWORKS": "true",
            "NTQ_REDIS_CHANNEL": self.channel,
        }

    def hook(self, kind: str, run: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.receiver_port}/{kind}/{run}{query}"

    def start(self) -> None:
        """Migrate, create the benchmark's application, start the receiver and the web."""
        assert self.settings.database_url
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url, pool_size=1, max_overflow=1)
        with self.engine.begin() as conn:
            creds = apps.create(conn, self.channel)
        self.app_id, self.api_key = creds.app_id, creds.api_key
        self._find_servers()
        self._start_receiver()
        web = self._spawn("web", "web", "--workers", str(self.web_workers))
        wait_http(web, self.port, "/healthz")

    def _find_servers(self) -> None:
        """The PostgreSQL postmaster's and Redis's process ids, when they run on this
        machine (a backend's parent is the postmaster; Redis tells its own)."""
        assert self.engine is not None
        assert self.settings.redis_url
        with self.engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        postmaster = parent(backend)
        if postmaster:
            self.server_pids["postgres"] = postmaster
        cache = redis.Redis.from_url(self.settings.redis_url)
        pid = int(cache.info("server").get("process_id", 0))
        cache.close()
        if pid and parent(pid):
            self.server_pids["redis"] = pid

    def _start_receiver(self) -> None:
        receiver = Child(
            "receiver", python_module("ntq.bench.hook"), self.env, self.workdir / "receiver.log"
        )
        self.children["receiver"] = receiver.start(stdout=subprocess.PIPE)
        assert receiver.popen is not None
        assert receiver.popen.stdout is not None
        self.receiver_port = int(receiver.popen.stdout.readline() or 0)
        wait_http(receiver, self.receiver_port, "/_stats/ready")

    def _spawn(self, name: str, *args: str) -> Child:
        child = Child(name, python_module("ntq", *args), self.env, self.workdir / f"{name}.log")
        self.children[name] = child.start()
        return child

    def start_delivery(self, concurrency: int, processes: int = 1) -> None:
        """Start ``processes`` workers with ``concurrency`` slots each, and the requeue
        poller."""
        self.stop_delivery()
        for n in range(processes):
            self._spawn(
                f"worker-{n}" if n else "worker", "worker", "--concurrency", str(concurrency)
            ).wait_for_log("worker.start")
        self._spawn("requeue", "requeue").wait_for_log("requeue.start")

    def workers(self) -> list[Child]:
        return [child for name, child in self.children.items() if name.startswith("worker")]

    def stop_delivery(self) -> None:
        self.note_memory()
        for name in [name for name in self.children if name.startswith(("worker", "requeue"))]:
            self.children.pop(name).stop()

    def check_alive(self) -> None:
        """Raise if one of the stack's processes has exited."""
        for child in self.children.values():
            if not child.alive:
                raise ScenarioFailed(f"{child.name} exited unexpectedly; see {child.log}")

    def note_memory(self) -> None:
        """Fold the running processes' high-water marks into :attr:`memory`."""
        if "web" in self.children:
            web = [peak_rss_mb(pid) for pid in self.children["web"].pids()]
            self.memory.web_process = max([self.memory.web_process, *web])
            self.memory.web_total = max(self.memory.web_total, sum(web))
        for worker in self.workers():
            self.memory.worker = max([self.memory.worker, *map(peak_rss_mb, worker.pids())])

    def meter(self, web: Callable[[], list[int]] | None = None) -> CpuMeter:
        """A CPU meter over every process that takes part (database and Redis included);
        ``web`` measures other processes in the web's place (a ceiling's server)."""

        def group(name: str) -> Any:
            return lambda: self.children[name].pids() if name in self.children else []

        groups = {name: group(name) for name in ("web", "requeue", "receiver")}
        if web is not None:
            groups["web"] = web
        groups["worker"] = lambda: [pid for w in self.workers() for pid in w.pids()]
        for name in ("postgres", "redis"):
            groups[name] = server_group(self.server_pids.get(name))
        return CpuMeter(groups)

    def clear(self) -> None:
        """Delete the benchmark's tasks and wake-ups, so each scenario starts empty."""
        assert self.engine is not None
        assert self.settings.redis_url
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE app_id = :id"), {"id": self.app_id})
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE tasks, attempts")
            )
        cache = redis.Redis.from_url(self.settings.redis_url)
        cache.delete(self.channel, f"{self.channel}:scheduled")
        cache.close()

    def stop(self) -> None:
        """Stop every process, then delete the benchmark's application and its tasks."""
        self.stop_delivery()
        self.note_memory()
        for name in list(self.children):
            self.children.pop(name).stop()
        if self.engine is not None:
            with self.engine.begin() as conn:
                conn.execute(text("DELETE FROM apps WHERE id = :id"), {"id": self.app_id})
            self.engine.dispose()
