"""Fixtures: real PostgreSQL and Redis (embedded unless named), migrated once, cleaned
between tests; a hook receiver; the real ntq processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from ntq import apps
from ntq.apps import Credentials
from ntq.config import Settings, load_settings
from ntq.db import make_engine, normalize_url
from ntq.embedded import postgres_url
from ntq.embedded import redis_url as embedded_redis_url
from ntq.migrate import upgrade
from tests.support.hook import HookServer, start_hook
from tests.support.procs import Api, RedisServer, Stack

TABLES = "attempts, tasks, api_keys, apps"


def _fresh_database(server_url: str) -> Iterator[str]:
    """A database of our own on a shared server, dropped afterwards."""
    name = f"ntq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(normalize_url(server_url)).set(database=name).render_as_string(
        hide_password=False)
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
        tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture(scope="session")
def engine(migrated: str) -> Iterator[Engine]:
    eng = make_engine(migrated, pool_size=5, max_overflow=20)
    yield eng
    eng.dispose()


@pytest.fixture
def clean(engine: Engine, redis_url: str) -> None:
    """Empty tables and Redis: every test starts from nothing."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def settings(clean: None, migrated: str, redis_url: str) -> Settings:
    return load_settings({}, database_url=migrated, redis_url=redis_url,
                         allow_private_networks=True, min_due_delay=0.2, max_due_delay=5.0)


@pytest.fixture
def creds(engine: Engine, clean: None) -> Credentials:
    with engine.begin() as conn:
        return apps.create(conn, "test-app")


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = start_hook()
    yield server
    server.shutdown()
    server.server_close()


def stack_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NTQ_", "DATABASE_URL",
                                                                      "REDIS_URL"))}
    env.update({
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "NTQ_ALLOW_PRIVATE_NETWORKS": "true", "NTQ_MIN_DUE_DELAY": "0.2",
        "NTQ_MAX_DUE_DELAY": "5", "NTQ_REQUEUE_INTERVAL": "0.5", "NTQ_LOG_FORMAT": "json",
        "NTQ_WORKER_GRACE": "10",
    })
    env.update(extra)
    return env


@pytest.fixture
def stack(clean: None, migrated: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Processes launched by the test; all stopped (or killed) afterwards."""
    running = Stack(stack_env(migrated, redis_url), tmp_path)
    yield running
    running.stop()


@pytest.fixture
def api(stack: Stack, creds: Credentials) -> Iterator[Api]:
    """A client of a running web process, as the test application."""
    stack.web()
    client = Api(stack.url, creds.api_key)
    yield client
    client.http.close()  # idle keep-alive connections would delay the web's graceful stop


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
