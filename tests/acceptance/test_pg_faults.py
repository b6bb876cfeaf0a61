"""Faults of PostgreSQL under a warm stack (issue 10, items 7-9): connections dropped by a
restart or ``pg_terminate_backend``, a database that turns read-only and back, and
concurrent batches whose idempotency keys overlap.

The stack runs on a private PostgreSQL (the tests terminate its sessions, restart it and
reconfigure it) with two web processes, each with several pooled connections: concurrent
clients warm every pool before the fault, so stale connections wait in each of them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from ntq.store import apps
from ntq.store.apps import Credentials
from ntq.store.db import normalize_url
from tests.conftest import stack_env
from tests.support.hook import HookServer
from tests.support.postgres import PrivatePostgres, migrated_private_postgres
from tests.support.procs import Api, Proc, RedisServer, Stack, wait_http
from tests.support.tasks import wait_until

CLIENTS = 8  # concurrent clients: several pooled connections in each web process


@dataclass
class Faulty:
    """A running stack on a private PostgreSQL, and what the test needs around it."""

    pg: PrivatePostgres
    stack: Stack
    creds: Credentials
    hook: HookServer
    url: str  # the hook's URL for tasks
    worker: Proc
    requeue: Proc
    engine: Engine  # the test's own view of ntq's database
    admin: Engine  # the server's "postgres" database, for faults

    @property
    def database(self) -> str:
        return str(make_url(self.pg.url).database)

    def terminate_ntq_sessions(self) -> int:
        """``pg_terminate_backend`` every session of ntq's processes; how many there were."""
        with self.admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'ntq' AND datname = :db"
                    ),
                    {"db": self.database},
                ).all()
            )

    def set_read_only(self, on: bool) -> None:
        """New sessions of ntq's database are read-only (or writable again); existing
        sessions keep what they had."""
        value = "on" if on else "off"
        with self.admin.connect() as conn:
            conn.execute(
                text(
                    f'ALTER DATABASE "{self.database}" SET default_transaction_read_only = {value}'
                )
            )


def _test_engine(url: str, database: str | None = None) -> Engine:
    """An engine of the test's own: pinged before use, and not named "ntq" (the faults
    spare it)."""
    parsed = make_url(normalize_url(url))
    if database:
        parsed = parsed.set(database=database)
    return create_engine(
        parsed,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
        connect_args={"application_name": "ntq-test"},
    )


@pytest.fixture
def faulty(tmp_path: Path, private_redis: RedisServer, hook: HookServer) -> Iterator[Faulty]:
    for pg in migrated_private_postgres(tmp_path / "pg"):
        engine, admin = _test_engine(pg.url), _test_engine(pg.url, "postgres")
        with engine.begin() as conn:
            creds = apps.create(conn, "pg-faults")
        (tmp_path / "logs").mkdir()
        stack = Stack(stack_env(pg.url, private_redis.url), tmp_path / "logs")
        try:
            web = stack.spawn("web", "--port", str(stack.port), "--workers", "2")
            wait_http(stack.url + "/healthz", web)
            yield Faulty(
                pg,
                stack,
                creds,
                hook,
                hook.script("/hook"),
                stack.worker("--concurrency", "10"),
                stack.requeue(),
                engine,
                admin,
            )
        finally:
            stack.stop()
            engine.dispose()
            admin.dispose()


# --- every kind of request, from concurrent clients --------------------------------------


@dataclass
class Answer:
    kind: str
    status: int
    body: Any
    headers: dict[str, str]


def _answer(kind: str, response: requests.Response) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Answer(kind, response.status_code, body, dict(response.headers))


def every_kind(api: Api, url: str, cancel_id: str) -> list[Answer]:
    """One request of each kind, in turn: single enqueue, batch (plain and with idempotency
    keys), read a task, list, cancel, the descriptor, readiness."""
    keys = [uuid.uuid4().hex for _ in range(3)]
    requests_by_kind: dict[str, Callable[[], requests.Response]] = {
        "enqueue": lambda: api.enqueue(url, b"x", "text/plain"),
        "batch": lambda: api.post("/tasks", json=[{"url": url, "body": str(i)} for i in range(3)]),
        "batch_keys": lambda: api.post(
            "/tasks", json=[{"url": url, "body": key, "idempotency_key": key} for key in keys]
        ),
        "get": lambda: api.get(f"/tasks/{cancel_id}"),
        "list": lambda: api.get("/tasks", params={"limit": 5}),
        "cancel": lambda: api.delete(f"/tasks/{cancel_id}"),
        "describe": lambda: api.get("/"),
        "readyz": lambda: api.get("/readyz"),
    }
    return [_answer(kind, send()) for kind, send in requests_by_kind.items()]


EXPECTED = {
    "enqueue": 201,
    "batch": 201,
    "batch_keys": 201,
    "get": 200,
    "list": 200,
    "cancel": 204,
    "describe": 200,
    "readyz": 200,
}


class Clients:
    """``CLIENTS`` keep-alive clients of the stack, each with delayed tasks to cancel."""

    def __init__(self, faulty: Faulty) -> None:
        self.faulty = faulty
        self.apis = [Api(faulty.stack.url, faulty.creds.api_key) for _ in range(CLIENTS)]
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.to_cancel: list[list[str]] = [[] for _ in range(CLIENTS)]

    def close(self) -> None:
        self.pool.shutdown()
        for api in self.apis:
            api.http.close()

    def delayed(self, per_client: int) -> None:
        """Enqueue tasks due in five minutes, for the clients to cancel later."""
        for number, api in enumerate(self.apis):
            for _ in range(per_client):
                response = api.enqueue(self.faulty.url, b"later", "text/plain", delay=300)
                assert response.status_code == 201, response.text
                self.to_cancel[number].append(response.json()["id"])

    def round(self) -> list[Answer]:
        """Every client sends every kind of request at once."""

        def client(number: int) -> list[Answer]:
            return every_kind(self.apis[number], self.faulty.url, self.to_cancel[number].pop())

        return [a for answers in self.pool.map(client, range(CLIENTS)) for a in answers]


@pytest.fixture
def clients(faulty: Faulty) -> Iterator[Clients]:
    running = Clients(faulty)
    running.delayed(per_client=4)
    yield running
    running.close()


def unexpected(answers: list[Answer]) -> list[tuple[str, int, Any]]:
    return [(a.kind, a.status, a.body) for a in answers if a.status != EXPECTED[a.kind]]


def enqueued_ids(answers: list[Answer]) -> set[str]:
    """The tasks the answers say were stored (and are due now)."""
    ids = set()
    for answer in answers:
        if answer.kind == "enqueue" and answer.status == 201:
            ids.add(answer.body["id"])
        elif answer.kind.startswith("batch") and answer.status == 201:
            ids.update(task["id"] for task in answer.body["tasks"])
    return ids


def assert_delivered(faulty: Faulty, ids: set[str], timeout: float = 30) -> None:
    def missing() -> set[str]:
        return ids - {r.headers["NTQ-Task-Id"] for r in faulty.hook.requests("/hook")}

    assert wait_until(lambda: not missing(), timeout), (
        f"{len(missing())} of {len(ids)} tasks not delivered"
    )


# --- 7. dropped connections ------------------------------------------------------------


def _terminate(faulty: Faulty) -> None:
    assert faulty.terminate_ntq_sessions() >= 2 * 2 + 1, "the pools were not warm"


def _restart(faulty: Faulty) -> None:
    faulty.pg.stop()
    faulty.pg.start()


@pytest.mark.parametrize("fault", [_terminate, _restart], ids=["terminated", "restarted"])
def test_dropped_connections_fail_no_request_once_postgres_answers(
    faulty: Faulty, clients: Clients, fault: Callable[[Faulty], None]
) -> None:
    warm = clients.round() + clients.round()
    assert not unexpected(warm), unexpected(warm)

    fault(faulty)
    logged = {proc: len(proc.output()) for proc in (faulty.worker, faulty.requeue)}
    after = clients.round()
    assert not unexpected(after), unexpected(after)  # not a single 503
    after += clients.round()
    assert not unexpected(after), unexpected(after)

    assert_delivered(faulty, enqueued_ids(warm + after))
    # Once PostgreSQL answered, the worker and the poller went on by themselves, on fresh
    # connections, without a failed round.
    for proc, failure in (
        (faulty.worker, "worker.dispatch_failed"),
        (faulty.requeue, "requeue.round_failed"),
    ):
        since = proc.output()[logged[proc] :]
        assert failure not in since, since[-2000:]


# --- 8. a database that turns read-only -----------------------------------------------


def test_read_only_database_answers_503_then_everything_recovers_by_itself(
    faulty: Faulty, clients: Clients
) -> None:
    warm = clients.round()
    assert not unexpected(warm), unexpected(warm)
    api = clients.apis[0]
    # Due while the database is read-only: delivered once it is writable again.
    before = {
        api.enqueue(faulty.url, b"before", "text/plain", delay=1).json()["id"] for _ in range(5)
    }

    faulty.set_read_only(True)
    faulty.terminate_ntq_sessions()  # they reconnect to a read-only database
    refused_until = time.monotonic() + 3
    while time.monotonic() < refused_until:
        for response in (
            api.enqueue(faulty.url, b"x", "text/plain"),
            api.post("/tasks", json=[{"url": faulty.url}] * 2),
            api.delete(f"/tasks/{clients.to_cancel[0][-1]}"),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "database_read_only", response.text
            assert int(response.headers["Retry-After"]) > 0
        ready = api.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"] == {"postgresql": "read-only", "redis": "ok"}
        assert api.get(f"/tasks/{next(iter(before))}").status_code == 200  # reads work
    delivered = {r.headers["NTQ-Task-Id"] for r in faulty.hook.requests("/hook")}
    assert not before & delivered, "a task was acquired in a read-only database"

    faulty.set_read_only(False)  # no session is killed: ntq must let go of its own
    after = clients.round()
    assert not unexpected(after), unexpected(after)
    assert_delivered(faulty, before | enqueued_ids(warm + after))


# --- 9. deadlocks -------------------------------------------------------------------------


def test_concurrent_batches_sharing_idempotency_keys_never_deadlock(
    api: Api, creds: Credentials, engine: Engine, hook: HookServer
) -> None:
    url = hook.script("/hook")
    keys = [f"key-{i}" for i in range(30)]
    deadlocks_before = _deadlocks(engine)
    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        shuffled = random.Random(seed)
        mine = Api(api.base, creds.api_key)
        for _ in range(6):
            batch = [
                {"url": url, "body": key, "idempotency_key": key}
                for key in shuffled.sample(keys, 20)
            ]
            response = mine.post("/tasks", json=batch, timeout=30)
            with lock:
                answers.append((response.status_code, response.json()))
        mine.http.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))

    assert {status for status, _ in answers} <= {200, 201}, [
        body for status, body in answers if status not in (200, 201)
    ][:3]
    ids_by_key: dict[str, set[str]] = {}
    for _, body in answers:
        for task in body["tasks"]:
            ids_by_key.setdefault(task["idempotency_key"], set()).add(task["id"])
    assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
    with engine.connect() as conn:
        stored: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT idempotency_key, count(*) FROM tasks WHERE app_id = :app "
                    "GROUP BY idempotency_key"
                ),
                {"app": creds.app_id},
            )
            .tuples()
            .all()
        )
    assert stored == dict.fromkeys(ids_by_key, 1)
    assert _deadlocks(engine) == deadlocks_before, "PostgreSQL detected a deadlock"


def _deadlocks(engine: Engine) -> int:
    """Deadlocks PostgreSQL has detected in this database, once every session's
    statistics have been flushed (PostgreSQL flushes an idle session's within a second)."""
    time.sleep(1.5)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )
