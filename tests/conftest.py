"""Fixtures: real PostgreSQL and Redis (embedded unless named), migrated once, cleaned
between tests; hook receivers; the real ntq processes, launched per test (``stack``,
``private_stack``) or shared by a module (``module_stack``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from ntq.config import Settings, load_settings
from ntq.embedded.servers import postgres_url
from ntq.embedded.servers import redis_url as embedded_redis_url
from ntq.store import apps, db
from ntq.store.apps import Credentials
from ntq.store.db import Store, make_engine, normalize_url
from ntq.store.migrate import upgrade
from tests.support.hook import HookServer, start_hook
from tests.support.procs import Api, RedisServer, Stack
from tests.support.tasks import new_app

TABLES = "attempts, tasks, api_keys, apps, counters"


def _fresh_database(server_url: str) -> Iterator[str]:
    """A database of our own on a shared server, dropped afterwards."""
    name = f"ntq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield (
        make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    named = os.environ.get("NTQ_TEST_DATABASE_URL")
    if named:
        yield from _fresh_database(named)
    else:
        yield postgres_url(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.environ.get("NTQ_TEST_REDIS_URL") or embedded_redis_url(
        tmp_path_factory.mktemp("redis")
    )


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture(scope="session")
def engine(migrated: str) -> Iterator[Engine]:
    eng = make_engine(migrated, pool_size=5, max_overflow=20)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def store(migrated: str) -> Iterator[Store]:
    """The store as ntq's processes connect it (autocommit; the store's own transactions)."""
    connected = db.connect(migrated, pool_size=5, max_overflow=20)
    yield connected
    connected.dispose()


def reset(engine: Engine, redis_url: str) -> None:
    """Empty every table and the Redis database."""
    with engine.begin() as conn:
        # DELETE, not TRUNCATE: on tables this small it takes a few milliseconds where
        # TRUNCATE (new files for every table and index) takes a tenth of a second.
        for table in TABLES.split(", "):
            conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608
    redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def clean(engine: Engine, redis_url: str) -> None:
    """Empty tables and Redis: every test starts from nothing."""
    reset(engine, redis_url)


@pytest.fixture
def settings(clean: None, migrated: str, redis_url: str) -> Settings:
    return load_settings(
        {},
        database_url=migrated,
        redis_url=redis_url,
        allow_private_networks=True,
        min_due_delay=0.2,
        max_due_delay=5.0,
    )


@pytest.fixture
def creds(engine: Engine, clean: None) -> Credentials:
    with engine.begin() as conn:
        return apps.create(conn, "test-app")


def _serving(server: HookServer) -> Iterator[HookServer]:
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook() -> Iterator[HookServer]:
    yield from _serving(start_hook())


@pytest.fixture
def hook2() -> Iterator[HookServer]:
    """A second hook receiver, on another loopback address (127.0.0.2)."""
    yield from _serving(start_hook("127.0.0.2"))


def stack_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NTQ_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "NTQ_ALLOW_PRIVATE_NETWORKS": "true",
            "NTQ_MIN_DUE_DELAY": "0.2",
            "NTQ_MAX_DUE_DELAY": "5",
            "NTQ_REQUEUE_INTERVAL": "0.5",
            "NTQ_LOG_FORMAT": "json",
            "NTQ_WORKER_GRACE": "10",
        }
    )
    env.update(extra)
    return env


def _stopped_afterwards(running: Stack) -> Iterator[Stack]:
    yield running
    running.stop()


def _client(stack: Stack, creds: Credentials) -> Iterator[Api]:
    stack.web()
    client = Api(stack.url, creds.api_key)
    yield client
    client.http.close()  # idle keep-alive connections would delay the web's graceful stop


@pytest.fixture
def stack(clean: None, migrated: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Processes launched by the test; all stopped (or killed) afterwards."""
    yield from _stopped_afterwards(Stack(stack_env(migrated, redis_url), tmp_path))


@pytest.fixture
def api(stack: Stack, creds: Credentials) -> Iterator[Api]:
    """A client of a running web process, as the test application."""
    yield from _client(stack, creds)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def private_stack(
    clean: None, migrated: str, private_redis: RedisServer, tmp_path: Path
) -> Iterator[Stack]:
    """Like ``stack``, on a Redis of the test's own, which it may stop, restart and flush."""
    yield from _stopped_afterwards(Stack(stack_env(migrated, private_redis.url), tmp_path))


@pytest.fixture
def private_api(private_stack: Stack, creds: Credentials) -> Iterator[Api]:
    """A client of a running web process of ``private_stack``, as the test application."""
    yield from _client(private_stack, creds)


# --- one stack for a whole module -------------------------------------------------------


def _short_name(module: ModuleType) -> str:
    return module.__name__.rpartition(".")[2].removeprefix("test_")


def module_stack(*, worker: bool = True, requeue: bool = False, **env: str) -> Any:
    """A module-scoped ``stack`` fixture, for a module whose tests can share ntq's
    processes (starting them per test costs seconds). A module opts in with
    ``stack = module_stack()``.

    Tables and Redis are emptied once; then one web, one worker (unless ``worker=False``)
    and one requeue poller (if ``requeue``) run for the whole module, with ``env`` on top of
    ``stack_env``'s settings. Tests must not take ``creds``, ``clean`` or the per-test
    ``api`` (they empty the tables under the running processes): each takes ``app`` or, with
    ``api = app_api`` in the module, ``api``: a new application of its own.
    """

    @pytest.fixture(scope="module", name="stack")
    def shared_stack(
        migrated: str,
        redis_url: str,
        engine: Engine,
        tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest,
    ) -> Iterator[Stack]:
        reset(engine, redis_url)
        running = Stack(
            stack_env(migrated, redis_url, **env),
            tmp_path_factory.mktemp(_short_name(request.module)),
        )
        try:
            running.web()
            if worker:
                running.worker()
            if requeue:
                running.requeue()
            yield running
        finally:
            running.stop()

    return shared_stack


@pytest.fixture
def app(
    stack: Stack, engine: Engine, request: pytest.FixtureRequest
) -> Iterator[tuple[Api, Credentials]]:
    """A new application on the module's running ``stack`` (see ``module_stack``), and a
    client authenticated as it."""
    client, creds = new_app(stack, engine, _short_name(request.module))
    yield client, creds
    client.http.close()


@pytest.fixture
def app_api(app: tuple[Api, Credentials]) -> Api:
    """``app``'s client; a module on a ``module_stack`` takes it as ``api = app_api``."""
    return app[0]
