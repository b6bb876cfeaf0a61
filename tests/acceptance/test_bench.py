"""``ntq bench --quick`` runs every scenario against the test servers and reports every figure,
with the machine's ceilings beside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text

SCENARIOS = ("enqueue", "batch", "end_to_end", "end_to_end_batch", "latency", "concurrency")


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NTQ_", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY"))}
    env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    return env


def test_quick_bench_reports_every_figure(migrated: str, redis_url: str, clean: None,
                                          engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "ntq", "bench", "--quick", "--json", str(out),
         "--log-dir", str(tmp_path / "logs")],
        env=_env(migrated, redis_url), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "target (issue 5)" in done.stdout  # the table
    data = json.loads(out.read_text())

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
    for figure in ("http_wsgi_per_s", "http_pyramid_per_s", "postgres_inserts_per_s",
                   "delivery_per_s"):
        assert ceilings[figure] > 0, figure
    assert "ceiling (no ntq)" in done.stdout
    rows = data["ceiling_shares"]
    assert {row["figure"] for row in rows} == {"single enqueue", "end to end, in arrays"}
    assert all(row["percent"] > 0 for row in rows)

    with engine.connect() as conn:  # the benchmark removes its application and tasks
        assert conn.execute(text("SELECT count(*) FROM apps WHERE name LIKE 'ntq-bench-%'")
                            ).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 0
        assert conn.execute(text("SELECT to_regclass('ntq_bench_ceiling')")).scalar() is None


def test_profile_records_each_process_with_a_summary(migrated: str, redis_url: str,
                                                     clean: None, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    done = subprocess.run(
        [sys.executable, "-m", "ntq", "bench", "--quick", "--only", "enqueue", "--tasks", "3000",
         "--json", str(tmp_path / "bench.json"), "--profile", str(profiles)],
        env=_env(migrated, redis_url), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (profiles / "enqueue-web.txt").stat().st_size > 0  # py-spy's collapsed stacks
    summary = (profiles / "enqueue-web.summary.txt").read_text()
    by_package = summary.split("on the stack")[0]
    for package in ("gunicorn", "pyramid", "ntq"):  # the web's layers, each sampled
        assert f"  {package}\n" in by_package, summary
    assert "enqueue_query (ntq/web/api/views.py)" in summary
