"""Fault injection with the real processes (SPEC §1): crashes of ntq's own processes, of
Redis and of PostgreSQL lose no task.

Every test here kills, restarts or flushes something for real. Leases are the task's
timeout plus ``transitions.LEASE_GRACE`` (10 s), so tasks use small timeouts and a test that must
wait for a lost attempt's lease waits 12-17 s.

Expected to fail until fixed: ``test_redis_connections_silently_dropped_...`` (the worker's
BLPOP and pub/sub connections have no read timeout, so a Redis connection that dies
without a FIN or RST hangs the worker for good).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import Engine, text

from ntq.store import apps, transitions
from ntq.store.apps import Credentials
from ntq.store.db import make_engine
from tests.conftest import stack_env
from tests.support.hook import HookServer
from tests.support.postgres import PrivatePostgres, migrated_private_postgres
from tests.support.procs import Api, Proc, RedisServer, Stack
from tests.support.tasks import TERMINAL, enqueue, wait_until

QUEUE_KEY = "ntq"  # NTQ_REDIS_CHANNEL's default
SCHEDULED_KEY = "ntq:scheduled"


# --- helpers -------------------------------------------------------------------------------


def db_tasks(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every task in the database: id -> {status, retry_count, last_status_code}."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, retry_count, last_status_code, last_error FROM tasks")
        ).all()
    return {str(r.id): r._asdict() for r in rows}


def wait_all_terminal(engine: Engine, timeout: float = 45) -> dict[str, dict[str, Any]]:
    """Wait until no task is PENDING; return them all (asserting on a timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = db_tasks(engine)
        pending = {k: v for k, v in tasks.items() if v["status"] not in TERMINAL}
        if not pending:
            return tasks
        if time.monotonic() > deadline:
            sample = list(pending.items())[:5]
            raise AssertionError(
                f"{len(pending)} of {len(tasks)} tasks still PENDING after "
                f"{timeout} s, e.g. {sample}"
            )
        time.sleep(0.2)


def delivered_ids(hook: HookServer, path: str) -> set[str]:
    return {r.headers["NTQ-Task-Id"] for r in hook.requests(path)}


def wait_delivered(hook: HookServer, path: str, ids: set[str], timeout: float = 30) -> set[str]:
    """Wait until the hook has seen every id in ``ids``; return the ones it has not."""
    deadline = time.monotonic() + timeout
    while True:
        missing = ids - delivered_ids(hook, path)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def proc_named(stack: Stack, command: str) -> Proc:
    (proc,) = [p for p in stack.procs if p.argv[3] == command and p.alive]
    return proc


def wait_exit(proc: Proc, timeout: float) -> tuple[int | None, float]:
    """Wait for ``proc`` to exit; its exit code (None if it did not) and the time taken."""
    started = time.monotonic()
    code = proc.wait(timeout)
    return code, time.monotonic() - started


def readyz(base: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(base + "/readyz", timeout=10)
    return response.status_code, response.json()


# --- 6. SIGKILL the worker ----------------------------------------------------------------


def test_worker_sigkilled_mid_delivery_every_task_still_completes(
    api: Api, stack: Stack, hook: HookServer, engine: Engine
) -> None:
    url = hook.script("/slow", {"sleep": 1})
    ids = {enqueue(api, url, timeout=2) for _ in range(30)}
    first = stack.worker("--concurrency", "10")

    hook.wait_for(13, "/slow")  # the first wave answered, the second one in flight
    first.kill()
    in_flight = {
        k for k, v in db_tasks(engine).items() if v["status"] == "PENDING" and v["retry_count"] >= 1
    }
    assert in_flight, "no attempt was in flight when the worker was killed"
    assert wait_until(lambda: hook.dropped, 5), "the hook never saw a connection cut by the kill"

    stack.worker("--concurrency", "10")
    stack.requeue()
    # The interrupted attempts come back when their lease (timeout 2 s + 10 s) expires.
    tasks = wait_all_terminal(engine, timeout=2 + transitions.LEASE_GRACE + 40)
    assert set(tasks) == ids
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}, tasks
    assert all(tasks[k]["retry_count"] >= 2 for k in in_flight), (
        "a task whose attempt was killed must have been attempted again"
    )
    assert all(v["last_status_code"] == 200 for v in tasks.values())
    assert delivered_ids(hook, "/slow") == ids


# --- 7. SIGKILL the web process ------------------------------------------------------------


@dataclass
class Clients:
    """Client threads enqueueing as fast as they can, recording what they were told."""

    api_base: str
    key: str
    url: str
    created: list[tuple[str, float]] = field(default_factory=list)  # (task id, when)
    errors: list[str] = field(default_factory=list)
    others: list[tuple[int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, count: int) -> Clients:
        for number in range(count):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, number: int) -> None:
        client = Api(self.api_base, self.key)
        sent = 0
        while not self.stop.is_set():
            sent += 1
            try:
                response = client.enqueue(
                    self.url, f"client {number} #{sent}".encode(), "text/plain"
                )
            except requests.RequestException as exc:
                with self.lock:
                    self.errors.append(type(exc).__name__)
                client.http.close()
                time.sleep(0.05)
                continue
            with self.lock:
                if response.status_code == 201:
                    self.created.append((response.json()["id"], time.monotonic()))
                else:
                    self.others.append((response.status_code, response.text[:200]))
        client.http.close()

    def count(self) -> int:
        with self.lock:
            return len(self.created)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_web_sigkilled_while_clients_enqueue_every_201_task_is_delivered(
    api: Api, stack: Stack, hook: HookServer, engine: Engine, creds: Credentials
) -> None:
    stack.worker("--concurrency", "20")
    stack.requeue()
    url = hook.script("/hook")
    clients = Clients(stack.url, creds.api_key, url).start(6)
    try:
        assert wait_until(lambda: clients.count() >= 60, 30), "clients got no 201s"
        proc_named(stack, "web").kill()  # SIGKILL to gunicorn's whole process group
        killed_at = time.monotonic()
        before = clients.count()
        time.sleep(1)
        stack.web()
        assert wait_until(lambda: clients.count() >= before + 60, 30), (
            "enqueues did not resume after the web restarted"
        )
    finally:
        clients.finish()

    created = {task_id for task_id, _ in clients.created}
    assert not clients.others, f"unexpected answers: {clients.others[:5]}"
    assert clients.errors, "no client noticed the web going away"
    assert len(created) == len(clients.created), "the same task id was returned twice"
    stored = set(db_tasks(engine))
    assert created <= stored, f"{len(created - stored)} tasks answered 201 are not stored"

    tasks = wait_all_terminal(engine, timeout=60)
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}
    missing = wait_delivered(hook, "/hook", created)
    assert not missing, f"{len(missing)} tasks answered 201 were never delivered"
    # Tasks stored but never confirmed to their client (the kill cut the answer) are
    # delivered too: PostgreSQL is the truth, not the client's view.
    assert not wait_delivered(hook, "/hook", stored)
    after = [t for t, at in clients.created if at > killed_at + 1]
    assert after, "no enqueue succeeded against the restarted web"


# --- 8. Redis restarted, flushed, down -----------------------------------------------------


def test_redis_restarted_enqueues_succeed_and_every_task_is_delivered(
    private_api: Api,
    private_stack: Stack,
    private_redis: RedisServer,
    hook: HookServer,
    engine: Engine,
) -> None:
    private_stack.worker("--concurrency", "10")
    private_stack.requeue()
    url = hook.script("/hook")
    ids = {enqueue(private_api, url) for _ in range(5)}
    assert not wait_delivered(hook, "/hook", ids, 15)

    private_redis.stop()
    ids |= {enqueue(private_api, url) for _ in range(10)}  # Redis down: still 201
    private_redis.start()  # same port
    ids |= {enqueue(private_api, url) for _ in range(10)}

    tasks = wait_all_terminal(engine, timeout=45)
    assert set(tasks) == ids
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}
    assert not wait_delivered(hook, "/hook", ids)
    assert wait_until(lambda: readyz(private_api.base)[0] == 200, 10)


def test_redis_flushed_loses_no_queued_scheduled_or_retrying_task(
    private_api: Api,
    private_stack: Stack,
    private_redis: RedisServer,
    hook: HookServer,
    engine: Engine,
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    flaky = hook.script("/flaky", {"status": 500}, {"status": 200})
    retrying = enqueue(private_api, flaky)
    # A worker makes the first attempt; the retry (>= 3 s later) is scheduled in Redis.
    worker = private_stack.worker("--concurrency", "1", NTQ_MIN_DUE_DELAY="3")
    hook.wait_for(1, "/flaky")
    worker.stop()

    url = hook.script("/hook")
    queued = {enqueue(private_api, url) for _ in range(10)}  # no worker: the hints wait in Redis
    delayed = {enqueue(private_api, url, delay=2) for _ in range(5)}  # in the scheduled set
    # The web sends its hints just after answering: wait for the last of them.
    assert wait_until(lambda: client.llen(QUEUE_KEY) == len(queued), 5)
    assert wait_until(lambda: client.zcard(SCHEDULED_KEY) == len(delayed) + 1, 5)
    client.flushall()

    private_stack.requeue()
    private_stack.worker("--concurrency", "10")
    tasks = wait_all_terminal(engine, timeout=45)
    assert set(tasks) == queued | delayed | {retrying}
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}
    assert not wait_delivered(hook, "/hook", queued | delayed)
    assert tasks[retrying]["retry_count"] == 2
    client.close()


def test_redis_down_for_10s_readyz_says_so_enqueues_succeed_then_all_reconnect(
    private_api: Api,
    private_stack: Stack,
    private_redis: RedisServer,
    hook: HookServer,
    engine: Engine,
) -> None:
    private_stack.worker("--concurrency", "10")
    requeue = private_stack.requeue()
    url = hook.script("/hook")
    ids = {enqueue(private_api, url) for _ in range(3)}
    assert readyz(private_api.base)[0] == 200

    private_redis.stop()
    down_until = time.monotonic() + 10
    status, body = readyz(private_api.base)
    assert status == 503, body
    assert body["checks"]["postgresql"] == "ok"
    assert body["checks"]["redis"] != "ok"
    assert "redis" in str(body).lower()
    while time.monotonic() < down_until:  # ten seconds of enqueues with Redis down
        ids.add(enqueue(private_api, url))
        time.sleep(0.25)
    assert readyz(private_api.base)[0] == 503

    private_redis.start()
    assert wait_until(lambda: readyz(private_api.base)[0] == 200, 15), readyz(private_api.base)
    tasks = wait_all_terminal(engine, timeout=45)
    assert set(tasks) == ids
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}
    assert not wait_delivered(hook, "/hook", ids)

    # Without the requeue poller, delivery now rests on the web's hints and the worker's
    # BLPOP alone: both must have reconnected by themselves.
    requeue.stop()
    fresh = {enqueue(private_api, url) for _ in range(3)}
    assert not wait_delivered(hook, "/hook", fresh, 15), (
        "web or worker did not reconnect to Redis (only the poller delivered)"
    )


class BlackholeProxy:
    """A TCP proxy in front of Redis. :meth:`blackhole` silently stops forwarding on every
    connection open at that moment (no FIN, no RST: a failover behind NAT, a dead link, a
    host that lost power); connections opened afterwards work."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.generation = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole(self) -> None:
        self.generation += 1

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            self.sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst, self.generation), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if generation == self.generation:  # else: swallowed, silently
                    dst.sendall(data)
            except OSError:
                return


def test_redis_connections_silently_dropped_worker_reconnects_by_itself(
    clean: None,
    migrated: str,
    private_redis: RedisServer,
    creds: Credentials,
    hook: HookServer,
    tmp_path: Path,
) -> None:
    """Redis (or the path to it) goes away without closing the connections, and comes
    back at the same address: every process must notice and reconnect, not wait forever
    on a dead socket."""
    proxy = BlackholeProxy(private_redis.port)
    stack = Stack(stack_env(migrated, proxy.url), tmp_path)
    api = Api(stack.url, creds.api_key)
    try:
        stack.web()
        stack.worker("--concurrency", "5")
        stack.requeue()
        url = hook.script("/hook")
        assert not wait_delivered(hook, "/hook", {enqueue(api, url)}, 15)
        time.sleep(1)  # the worker is back in BLPOP on its (soon dead) connection

        proxy.blackhole()
        dropped_at = time.monotonic()
        ids = {enqueue(api, url) for _ in range(3)}  # 201 (the web's hint times out)
        missing = wait_delivered(hook, "/hook", ids, 20)
        assert not missing, (
            f"{len(missing)} of {len(ids)} tasks not delivered 20 s after the Redis "
            "connections died silently: the worker still waits on its dead BLPOP "
            "connection (no socket timeout)"
        )

        # The cancel listener (pub/sub) must have reconnected too, in a while (a cancel
        # published before it has is lost: a hint, never the truth): once it has, a
        # cancel interrupts the running attempt promptly.
        time.sleep(max(0.0, dropped_at + 15 - time.monotonic()))
        hang = hook.script("/hang", {"sleep": 20}, {"status": 200})
        task_id = enqueue(api, hang, timeout=30)
        hook.wait_for(1, "/hang")
        assert api.delete(f"/tasks/{task_id}").status_code == 204
        assert wait_until(lambda: "/hang" in hook.dropped, 10), (
            "the running attempt was not interrupted: the cancel listener is deaf"
        )
    finally:
        api.http.close()
        stack.stop()
        proxy.close()


# --- 9. PostgreSQL restarted ---------------------------------------------------------------


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    yield from migrated_private_postgres(tmp_path / "pg")


def test_postgres_restarted_web_answers_503_then_recovers_and_no_task_is_lost(
    private_pg: PrivatePostgres, private_redis: RedisServer, hook: HookServer, tmp_path: Path
) -> None:
    engine = make_engine(private_pg.url, pool_size=2, max_overflow=2)
    with engine.begin() as conn:
        creds = apps.create(conn, "pg-app")
    (tmp_path / "logs").mkdir()
    stack = Stack(stack_env(private_pg.url, private_redis.url), tmp_path / "logs")
    api = Api(stack.url, creds.api_key)
    try:
        stack.web()
        stack.worker("--concurrency", "10")
        stack.requeue()
        fast = hook.script("/hook")
        slow = hook.script("/slow", {"sleep": 2})
        ids = {enqueue(api, fast) for _ in range(5)}
        in_flight = {enqueue(api, slow, timeout=5) for _ in range(4)}
        hook.wait_for(4, "/slow")  # these attempts outlive the database

        private_pg.stop()
        response = api.enqueue(fast, b"x", "text/plain")
        assert response.status_code == 503, response.text
        assert response.headers.get("Retry-After"), response.headers
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]["code"], response.json()
        read = api.get(f"/tasks/{next(iter(ids))}")
        assert read.status_code == 503, read.text
        assert read.headers.get("Retry-After")
        status, body = readyz(api.base)
        assert status == 503, body
        assert body["checks"]["postgresql"] != "ok"
        assert body["checks"]["redis"] == "ok"
        time.sleep(4)  # the slow attempts end while the database is away

        private_pg.start()
        assert wait_until(lambda: readyz(api.base)[0] == 200, 30), readyz(api.base)
        ids |= {enqueue(api, fast) for _ in range(5)}
        engine.dispose()
        tasks = wait_all_terminal(engine, timeout=60)
        assert set(tasks) == ids | in_flight
        assert {v["status"] for v in tasks.values()} == {"COMPLETED"}, tasks
        assert not wait_delivered(hook, "/hook", ids)
        # The attempts that ended during the outage were recorded once the database came
        # back (the worker retries its write): delivered once, not retried after a lease.
        assert sorted(r.headers["NTQ-Task-Id"] for r in hook.requests("/slow")) == sorted(in_flight)
        assert all(tasks[k]["retry_count"] == 1 for k in in_flight), tasks
    finally:
        api.http.close()
        stack.stop()
        engine.dispose()


# --- 10. SIGTERM to a worker ---------------------------------------------------------------


def test_sigterm_lets_in_flight_attempts_finish_takes_nothing_new_and_exits_0(
    api: Api, stack: Stack, hook: HookServer, engine: Engine
) -> None:
    url = hook.script("/slow", {"sleep": 2})
    ids = [enqueue(api, url, timeout=10) for _ in range(8)]
    worker = stack.worker("--concurrency", "4")
    hook.wait_for(4, "/slow")

    worker.signal(signal.SIGTERM)
    code, _ = wait_exit(worker, 10 + 10)  # NTQ_WORKER_GRACE is 10 in the stack
    assert code == 0, worker.output()
    assert "worker.stopping" in worker.output()
    assert len(hook.requests("/slow")) == 4, "the worker took new tasks after SIGTERM"
    assert not hook.dropped, "an in-flight attempt was cut instead of finishing"
    tasks = db_tasks(engine)
    done = {k for k, v in tasks.items() if v["status"] == "COMPLETED"}
    assert done == delivered_ids(hook, "/slow"), "in-flight attempts were not recorded"
    untouched = {k for k, v in tasks.items() if v["retry_count"] == 0}
    assert untouched == set(ids) - done

    stack.worker("--concurrency", "4")
    tasks = wait_all_terminal(engine, timeout=30)
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}
    assert all(v["retry_count"] == 1 for v in tasks.values()), tasks


def test_second_sigterm_stops_the_worker_at_once_and_the_tasks_are_retried_later(
    api: Api, stack: Stack, hook: HookServer, engine: Engine
) -> None:
    # Three attempts hang for 6 s; afterwards the hook answers at once. Lease: 7 + 10 s.
    url = hook.script("/hang", {"sleep": 6}, {"sleep": 6}, {"sleep": 6}, {"status": 200})
    ids = {enqueue(api, url, timeout=7) for _ in range(3)}
    worker = stack.worker("--concurrency", "4")
    hook.wait_for(3, "/hang")

    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    code, took = wait_exit(worker, 10)
    assert code is not None, "the worker did not stop after a second SIGTERM"
    # "At once": well before the hanging attempts would have ended by themselves.
    assert took < 4, f"the worker needed {took:.1f} s to stop after the second signal"
    assert "worker.force_stop" in worker.output()
    assert wait_until(lambda: len(hook.dropped) == 3, 5), hook.dropped
    assert {v["status"] for v in db_tasks(engine).values()} == {"PENDING"}

    stack.worker("--concurrency", "4")
    stack.requeue()
    tasks = wait_all_terminal(engine, timeout=7 + transitions.LEASE_GRACE + 25)
    assert set(tasks) == ids
    assert {v["status"] for v in tasks.values()} == {"COMPLETED"}
    assert all(v["retry_count"] == 2 for v in tasks.values()), tasks
    assert code == 0, f"exit code {code} after the second signal:\n{worker.output()}"


def test_sigterm_grace_expiry_interrupts_attempts_and_exits(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    url = hook.script("/hang", {"sleep": 8})
    for _ in range(2):
        enqueue(api, url, timeout=10)
    worker = stack.worker("--concurrency", "4", NTQ_WORKER_GRACE="1")
    hook.wait_for(2, "/hang")

    worker.signal(signal.SIGTERM)
    code, took = wait_exit(worker, 15)
    assert code == 0, worker.output()
    assert took < 7, f"the worker needed {took:.1f} s with a 1 s grace period"
    assert "worker.grace_expired" in worker.output()
    assert wait_until(lambda: len(hook.dropped) == 2, 5), hook.dropped
