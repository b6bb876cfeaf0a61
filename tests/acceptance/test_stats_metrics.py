"""``GET /stats`` (per application) and ``GET /metrics`` (Prometheus, summed over every
process in PostgreSQL) match what the test did (issue 3, SPEC §3), with the web and two
workers as separate processes; Prometheus's ``promtool`` accepts ``/metrics`` (issue 10).
Which of them need a key is tested in process: ``tests/integration/api/test_stats_metrics.py``."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.support.hook import HookServer
from tests.support.procs import Api, Stack
from tests.support.scrape import exposition, promtool_check, wait_metrics
from tests.support.tasks import TERMINAL, enqueue, finished


def stats(api: Api) -> dict[str, Any]:
    response = api.get("/stats")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def attempts_total(sample: dict[str, float], outcome: str) -> float:
    return sample.get(f'ntq_attempts_total{{outcome="{outcome}"}}', 0)


def test_stats_and_metrics_match_what_happened(
    api: Api, stack: Stack, creds: Credentials, engine: Engine, hook: HookServer
) -> None:
    with engine.begin() as conn:
        other_creds = apps.create(conn, "other-app")
    other = Api(stack.url, other_creds.api_key)

    # No worker yet: everything stays PENDING, five tasks due now.
    ok = [enqueue(api, hook.script(f"/ok{i}")) for i in range(3)]
    bad = enqueue(api, hook.script("/bad", {"status": 404}))
    flaky = enqueue(api, hook.script("/flaky", {"status": 500}, {"status": 200}))
    waiting = enqueue(api, hook.script("/waiting"), delay=60)
    cancelled = enqueue(api, hook.script("/cancelled"), delay=60, cancel_notice="always")
    assert api.delete(f"/tasks/{cancelled}").status_code == 204
    enqueue(other, hook.script("/other"), delay=60)
    time.sleep(0.2)

    before = stats(api)
    assert before["counts"] == {"PENDING": 6, "COMPLETED": 0, "FAILED": 0, "CANCELLED": 1}
    assert before["due_now"] == 5
    assert before["oldest_pending_age_seconds"] > 0
    assert before["completed_last_minute"] == before["failed_last_minute"] == 0
    assert before["completed_last_hour"] == before["failed_last_hour"] == 0
    assert set(before["delivery_latency_seconds"]) >= {"mean", "p99"}

    sample = wait_metrics(stack.url, lambda s: s["ntq_tasks_enqueued_total"] == 8)
    assert sample["ntq_tasks_cancelled_total"] == 1
    assert sample["ntq_tasks_completed_total"] == sample["ntq_tasks_failed_total"] == 0
    assert sample["ntq_attempt_duration_seconds_count"] == 0
    assert sample["ntq_tasks_pending"] == 7  # every application's
    assert sample["ntq_tasks_due_now"] == 5

    # Two workers, each a process of its own, share the work and the counters.
    stack.worker()
    stack.worker()
    for task_id in (*ok, bad, flaky):
        assert api.wait_status(task_id, *TERMINAL)["status"] in TERMINAL
    hook.wait_for(1, "/cancelled", method="DELETE", timeout=10)
    deadline = time.monotonic() + 5
    while not api.get(f"/tasks/{cancelled}/attempts").json()["attempts"]:
        assert time.monotonic() < deadline, "the cancel notice was not recorded"
        time.sleep(0.05)

    after = stats(api)
    assert after["counts"] == {"PENDING": 1, "COMPLETED": 4, "FAILED": 1, "CANCELLED": 1}
    assert after["due_now"] == 0
    assert after["oldest_pending_age_seconds"] > 0
    assert (after["completed_last_minute"], after["failed_last_minute"]) == (4, 1)
    assert (after["completed_last_hour"], after["failed_last_hour"]) == (4, 1)
    latency = after["delivery_latency_seconds"]
    assert latency["mean"] > 0
    assert latency["p99"] >= latency["mean"]
    assert stats(other)["counts"] == {"PENDING": 1, "COMPLETED": 0, "FAILED": 0, "CANCELLED": 0}
    assert api.task(waiting)["status"] == "PENDING"

    histogram = "ntq_attempt_duration_seconds"
    sample = wait_metrics(stack.url, lambda s: s[f"{histogram}_count"] == 7)
    assert sample["ntq_tasks_enqueued_total"] == 8
    assert (
        attempts_total(sample, "complete"),
        attempts_total(sample, "retry"),
        attempts_total(sample, "fail"),
        attempts_total(sample, "cancel_notice"),
        attempts_total(sample, "interrupted"),
    ) == (4, 1, 1, 1, 0)
    assert sample["ntq_tasks_completed_total"] == 4
    assert sample["ntq_tasks_failed_total"] == 1
    assert sample["ntq_tasks_cancelled_total"] == 1
    assert sample[f'{histogram}_bucket{{le="+Inf"}}'] == 7
    assert sample[f"{histogram}_sum"] >= 0
    buckets = [v for k, v in sample.items() if k.startswith(f"{histogram}_bucket")]
    assert buckets == sorted(buckets), "histogram buckets are not cumulative"
    assert sample["ntq_tasks_pending"] == 2
    assert sample["ntq_tasks_due_now"] == 0


def test_promtool_accepts_metrics_after_real_deliveries(
    api: Api, stack: Stack, hook: HookServer
) -> None:
    stack.worker()
    done = enqueue(api, hook.script("/done"))
    failed = enqueue(api, hook.script("/gone", {"status": 410}))
    cancelled = enqueue(api, hook.script("/later"), delay=60)
    assert api.delete(f"/tasks/{cancelled}").status_code == 204
    finished(api, done)
    finished(api, failed)
    wait_metrics(
        stack.url,
        lambda s: (
            (
                s["ntq_tasks_completed_total"],
                s["ntq_tasks_failed_total"],
                s["ntq_tasks_cancelled_total"],
            )
            == (1, 1, 1)
        ),
    )

    text = exposition(stack.url)
    promtool_check(text)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert families == helped
    assert {
        "ntq_tasks_enqueued_total",
        "ntq_attempts_total",
        "ntq_tasks_pending",
        "ntq_redis_up",
        "ntq_attempt_duration_seconds",
    } <= families
