"""Counters and a latency histogram kept in Redis, so every web and worker process on any
host adds to the same numbers; ``GET /metrics`` renders them in Prometheus text format.

Losing Redis resets them, which Prometheus reads as a counter reset: rates stay right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

# Upper bounds (seconds) of the attempt-duration histogram's buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = ("complete", "retry", "fail", "interrupted", "stale", "cancel_notice")
TERMINAL_COUNTERS = {"COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled"}


def count_enqueued(counts: Counter[str], n: int) -> None:
    counts["enqueued"] += n


def count_attempt(counts: Counter[str], outcome: str, elapsed_ms: int) -> None:
    counts[f"attempts:{outcome}"] += 1
    seconds = elapsed_ms / 1000
    index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
    counts[f"duration_bucket:{index}"] += 1
    counts["duration_sum_ms"] += elapsed_ms


def count_terminal(counts: Counter[str], status: str) -> None:
    if status in TERMINAL_COUNTERS:
        counts[TERMINAL_COUNTERS[status]] += 1


def add(pipe: Any, key: str, counts: Counter[str]) -> None:
    """Add what ``counts`` gathered to the shared counters: one HINCRBY per field, however
    many events it sums."""
    for field, n in counts.items():
        if n:
            pipe.hincrby(key, field, n)


def render(raw: Mapping[bytes, bytes], gauges: Mapping[str, float]) -> str:
    """The Prometheus exposition of the counters in ``raw`` plus the given gauges."""
    values = {k.decode(): int(v) for k, v in raw.items()}
    lines = [
        "# HELP ntq_tasks_enqueued_total Tasks accepted by the API.",
        "# TYPE ntq_tasks_enqueued_total counter",
        f"ntq_tasks_enqueued_total {values.get('enqueued', 0)}",
        "# HELP ntq_attempts_total Delivery attempts by outcome.",
        "# TYPE ntq_attempts_total counter",
        *(f'ntq_attempts_total{{outcome="{o}"}} {values.get(f"attempts:{o}", 0)}'
          for o in OUTCOMES),
    ]
    for name in TERMINAL_COUNTERS.values():
        lines += [f"# HELP ntq_tasks_{name}_total Tasks that became {name.upper()}.",
                  f"# TYPE ntq_tasks_{name}_total counter",
                  f"ntq_tasks_{name}_total {values.get(name, 0)}"]
    lines += _histogram(values)
    for name, value in gauges.items():
        lines += [f"# TYPE ntq_{name} gauge", f"ntq_{name} {value:g}"]
    return "\n".join(lines) + "\n"


def _histogram(values: Mapping[str, int]) -> list[str]:
    name = "ntq_attempt_duration_seconds"
    lines = [f"# HELP {name} Time from sending a webhook request to its full response.",
             f"# TYPE {name} histogram"]
    total = 0
    for i, bound in enumerate((*BUCKETS, float("inf"))):
        total += values.get(f"duration_bucket:{i}", 0)
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        lines.append(f'{name}_bucket{{le="{le}"}} {total}')
    lines.append(f"{name}_sum {values.get('duration_sum_ms', 0) / 1000:g}")
    lines.append(f"{name}_count {total}")
    return lines
