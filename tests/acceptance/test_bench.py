"""``ntq bench --quick`` runs every scenario against the test servers and reports every figure,
with the machine's ceilings beside them; a scenario that fails (errors from the web, tasks
not delivered, a process that died) makes it exit 1 and say which and why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, text

from ntq.bench.procs import children

SCENARIOS = ("enqueue", "batch", "end_to_end", "end_to_end_batch", "latency", "concurrency")


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NTQ_", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY"))
    }
    env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    return env


def bench(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``ntq bench --quick`` with ``args``, its JSON in ``bench.json``, running."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ntq",
            "bench",
            "--quick",
            "--json",
            str(tmp_path / "bench.json"),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_quick_bench_reports_every_figure(
    migrated: str, redis_url: str, clean: None, engine: Engine, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntq",
            "bench",
            "--quick",
            "--json",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        env=_env(migrated, redis_url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "target (issue 5)" in done.stdout  # the table
    assert "failed" not in done.stderr
    data = json.loads(out.read_text())
    assert data["failures"] == {}
    assert all(data[name]["failures"] == [] for name in SCENARIOS), data

    assert data["enqueue"]["tasks_per_s"] > 0
    assert data["enqueue"]["errors"] == {}
    assert not data["batch"]["available"] or data["batch"]["tasks_per_s"] > 0
    for e2e in (data["end_to_end"], data["end_to_end_batch"]):
        assert e2e["complete"]
        assert e2e["tasks"] == e2e["enqueued"] == data["sizes"]["tasks"]
        assert e2e["tasks_per_s"] > 0
    assert data["end_to_end_batch"]["batch"] == data["sizes"]["batch"]
    latency = data["latency"]
    assert latency["complete"]
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    sleepers = data["concurrency"]
    assert sleepers["tasks"] == data["sizes"]["sleepers"]
    assert sleepers["seconds"] >= 1.0
    assert sleepers["peak_in_flight"] > 1
    assert sleepers["worker_peak_rss_mb"] > 0
    assert all(value > 0 for value in data["memory"].values())
    for name in SCENARIOS:
        if data[name].get("available", True):
            assert {"web", "postgres", "receiver", "generator", "machine"} <= set(data[name]["cpu"])
    assert len(data["targets"]) == 7

    ceilings = data["ceilings"]  # what the machine does without ntq, in the same run
    for figure in (
        "http_wsgi_per_s",
        "http_pyramid_per_s",
        "postgres_inserts_per_s",
        "delivery_per_s",
    ):
        assert ceilings[figure] > 0, figure
    assert "ceiling (no ntq)" in done.stdout
    rows = data["ceiling_shares"]
    assert {row["figure"] for row in rows} == {"single enqueue", "end to end, in arrays"}
    assert all(row["percent"] > 0 for row in rows)

    with engine.connect() as conn:  # the benchmark removes its application and tasks
        assert (
            conn.execute(text("SELECT count(*) FROM apps WHERE name LIKE 'ntq-bench-%'")).scalar()
            == 0
        )
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 0
        assert conn.execute(text("SELECT to_regclass('ntq_bench_ceiling')")).scalar() is None


def test_profile_records_each_process_with_a_summary(
    migrated: str, redis_url: str, clean: None, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntq",
            "bench",
            "--quick",
            "--only",
            "enqueue",
            "--tasks",
            "3000",
            "--json",
            str(tmp_path / "bench.json"),
            "--profile",
            str(profiles),
        ],
        env=_env(migrated, redis_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (profiles / "enqueue-web.txt").stat().st_size > 0  # py-spy's collapsed stacks
    summary = (profiles / "enqueue-web.summary.txt").read_text()
    by_package = summary.split("on the stack")[0]
    for package in ("gunicorn", "pyramid", "ntq"):  # the web's layers, each sampled
        assert f"  {package}\n" in by_package, summary
    assert "enqueue_query (ntq/web/api/views.py)" in summary


def test_a_web_that_refuses_the_enqueues_fails_the_run_and_says_why(
    migrated: str, redis_url: str, clean: None, tmp_path: Path
) -> None:
    """A body limit smaller than the generator's task bodies: every enqueue is a 413."""
    env = {**_env(migrated, redis_url), "NTQ_MAX_BODY_BYTES": "8"}
    run = bench(env, tmp_path, "--only", "enqueue,batch,end_to_end", "--tasks", "200")
    stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 1, stdout + stderr
    for line in (
        "ntq bench: enqueue failed: POST / answered 413 (200 requests)",
        "ntq bench: enqueue failed: 0 of 200 tasks enqueued",
        "ntq bench: batch failed: POST /tasks answered 413",
        "ntq bench: end_to_end failed: POST / answered 413 (200 requests)",
    ):
        assert line in stderr, stderr
    assert "FAILED: enqueue: POST / answered 413" in stdout  # the table says so too
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data["failures"]) == {"enqueue", "batch", "end_to_end"}, data["failures"]


def worker_of(pid: int) -> int | None:
    """The ``ntq worker`` process among ``pid``'s descendants, if one runs."""
    for child in children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"ntq", b"worker"]:
            return child
    return None


def test_a_worker_that_dies_mid_scenario_fails_the_run_and_says_which(
    migrated: str, redis_url: str, clean: None, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    run = bench(
        _env(migrated, redis_url),
        tmp_path,
        "--only",
        "end_to_end,latency",
        "--tasks",
        "50000",
        "--log-dir",
        str(logs),
    )
    try:
        deadline = time.monotonic() + 120
        # Once the load generator runs, the scenario is under way.
        while not (logs / "generator.log").exists() and run.poll() is None:
            assert time.monotonic() < deadline, "the benchmark never started its load"
            time.sleep(0.05)
        worker = worker_of(run.pid)
        assert worker is not None, run.communicate()
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.terminate()
            run.communicate(timeout=60)
    assert run.returncode == 1, stdout + stderr
    assert "ntq bench: end_to_end failed: worker exited unexpectedly; see " in stderr, stderr
    assert "latency" not in stderr, "the run went on without a worker"
    data = json.loads((tmp_path / "bench.json").read_text())
    assert list(data["failures"]) == ["end_to_end"], data["failures"]
    assert "end_to_end" not in data, "a scenario cut short reported figures"
    assert "latency" not in data, "the run went on without a worker"
