"""The counters behind ``GET /metrics``, kept in PostgreSQL so they never go backwards.

Each process tallies what it announces in memory (the web: enqueued and cancelled tasks; a
worker: attempts by outcome and duration, terminal states, callbacks) and a background
thread (a greenlet under gevent) adds the tally to that process's rows of the ``counters``
table (:mod:`ntq.store.counters`) about once a second: one statement per flush, nothing
per event. Rows only grow; the requeue poller folds the rows of processes gone quiet into
``folded`` ones, so the sums ``/metrics`` reads never decrease, whatever becomes of Redis
and of the processes. A process killed outright loses at most its last second of counts,
which Prometheus sees as a slower rise, never as a reset.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping

import structlog
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ntq.records import Outcome, Status
from ntq.store import counters
from ntq.store.db import DatabaseError, Store

log = structlog.get_logger(__name__)

# Upper bounds (seconds) of the attempt-duration histogram's buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = tuple(str(outcome) for outcome in Outcome)
TERMINAL_COUNTERS = {
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}
GAUGES = {
    "tasks_pending": "PENDING tasks of every application.",
    "tasks_due_now": "PENDING tasks whose due time has passed.",
    "redis_queue_length": "Task ids in Redis's queue list, not yet taken by a worker.",
    "redis_up": "1 if Redis answered during this scrape, else 0.",
}

FLUSH_INTERVAL = 1.0
# A process that has not written its counts for this long is folded (gone, or idle: an
# idle one simply starts new rows when it counts again).
FOLD_AFTER = 600


def count_enqueued(counts: Counter[str], n: int) -> None:
    counts["enqueued"] += n


def count_attempt(counts: Counter[str], outcome: Outcome, elapsed_ms: int) -> None:
    counts[f"attempts:{outcome}"] += 1
    seconds = elapsed_ms / 1000
    index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
    counts[f"duration_bucket:{index}"] += 1
    counts["duration_sum_ms"] += elapsed_ms


def count_terminal(counts: Counter[str], status: Status) -> None:
    if status in TERMINAL_COUNTERS:
        counts[TERMINAL_COUNTERS[status]] += 1


class Tally:
    """This process's counts not yet in PostgreSQL. The first count starts the thread that
    writes them (so a tally made before a fork writes from the child that counts) and
    registers a last write at exit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._process: str | None = None

    def add(self, counts: Counter[str]) -> None:
        """Count these events (in memory: the next flush writes them)."""
        with self._lock:
            self._counts.update(counts)
            starting = self._process is None
            if starting:
                self._process = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        if starting:
            threading.Thread(target=self._run, name="ntq-metrics", daemon=True).start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        """Add what was counted since the last flush to this process's rows; what
        PostgreSQL does not take now waits for the next flush."""
        with self._lock:
            counts, self._counts = +self._counts, Counter()
            process = self._process
        if not counts or process is None:  # nothing counted yet, or nothing since
            return
        if not self._write(process, counts):
            with self._lock:
                self._counts.update(counts)

    def _write(self, process: str, counts: Counter[str]) -> bool:
        try:
            counters.add(self.store, process, counts)
        except DatabaseError as exc:
            log.warning("metrics.flush_failed", error=str(exc).splitlines()[0])
            return False
        except Exception:  # whatever failed, the counts must wait, not vanish with the thread
            log.exception("metrics.flush_failed")
            return False
        return True


class _Families:
    """A prometheus_client collector of metric families already built."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(counted: Mapping[str, int], gauges: Mapping[str, float]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of the ``counted`` totals and the
    given gauges (named as in :data:`GAUGES`)."""
    families = [*_counters(counted), _histogram(counted)]
    families += [
        GaugeMetricFamily(f"ntq_{name}", GAUGES[name], value=value)
        for name, value in gauges.items()
    ]
    return generate_latest(_Families(families))


def _counters(counted: Mapping[str, int]) -> list[Metric]:
    attempts = CounterMetricFamily(
        "ntq_attempts", "Delivery attempts by outcome.", labels=["outcome"]
    )
    extra = sorted(
        {name.removeprefix("attempts:") for name in counted if name.startswith("attempts:")}
        - set(OUTCOMES)
    )
    for outcome in (*OUTCOMES, *extra):
        attempts.add_metric([outcome], counted.get(f"attempts:{outcome}", 0))
    enqueued = CounterMetricFamily(
        "ntq_tasks_enqueued",
        "Tasks enqueued: accepted by the API, replayed, or created as callbacks.",
        value=counted.get("enqueued", 0),
    )
    terminal = [
        CounterMetricFamily(
            f"ntq_tasks_{name}", f"Tasks that became {status}.", value=counted.get(name, 0)
        )
        for status, name in TERMINAL_COUNTERS.items()
    ]
    return [enqueued, attempts, *terminal]


def _histogram(counted: Mapping[str, int]) -> Metric:
    per_bucket = (counted.get(f"duration_bucket:{i}", 0) for i in range(len(BUCKETS) + 1))
    bounds = [*(str(bound) for bound in BUCKETS), "+Inf"]
    return HistogramMetricFamily(
        "ntq_attempt_duration_seconds",
        "Time from sending a webhook request to its full response.",
        buckets=list(zip(bounds, itertools.accumulate(per_bucket), strict=True)),
        sum_value=counted.get("duration_sum_ms", 0) / 1000,
    )
