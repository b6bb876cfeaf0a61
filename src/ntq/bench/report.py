"""What the benchmark shows: a progress line while it runs, then a table of figures set
against issue 5's targets, and CPU use per process so a bottleneck can be named."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

CPU_COLUMNS = (
    "web",
    "worker",
    "requeue",
    "postgres",
    "redis",
    "receiver",
    "generator",
    "others",
    "machine",
)
QUIET_INTERVAL = 2.0
CONTENDED = 20.0  # percent of a core used by other processes worth a warning


@dataclass(frozen=True)
class Target:
    """One of issue 5's targets: ``scenario[figure] <op> limit``, stated for the size
    ``scenario[size_figure] == size`` (a run of another size is not judged)."""

    name: str
    scenario: str
    figure: str
    op: str
    limit: float
    unit: str
    size_figure: str
    size: float

    def measured(self, results: dict[str, Any]) -> float | None:
        value = results.get(self.scenario, {}).get(self.figure)
        return float(value) if isinstance(value, int | float) else None

    def comparable(self, results: dict[str, Any]) -> bool:
        return bool(results.get(self.scenario, {}).get(self.size_figure) == self.size)

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit


TARGETS = (
    Target(
        "single enqueue, POST /", "enqueue", "tasks_per_s", ">=", 4000, "tasks/s", "tasks", 50_000
    ),
    Target(
        "batch enqueue, POST /tasks",
        "batch",
        "tasks_per_s",
        ">=",
        20000,
        "tasks/s",
        "tasks",
        50_000,
    ),
    Target(
        "end-to-end, 50,000 tasks",
        "end_to_end",
        "tasks_per_s",
        ">=",
        2000,
        "tasks/s",
        "tasks",
        50_000,
    ),
    Target(
        "  the same, enqueued in arrays",
        "end_to_end_batch",
        "tasks_per_s",
        ">=",
        2000,
        "tasks/s",
        "tasks",
        50_000,
    ),
    Target("latency p99 at 500/s", "latency", "p99_ms", "<=", 25, "ms", "rate", 500),
    Target("1,000 one-second hooks", "concurrency", "seconds", "<=", 2.5, "s", "tasks", 1000),
    Target(
        "worker RSS, 1,000 in flight",
        "concurrency",
        "worker_peak_rss_mb",
        "<=",
        200,
        "MB",
        "tasks",
        1000,
    ),
)


def assess(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured figure and whether it was met (None when the run
    was not of the target's size, or did not measure it)."""
    rows = []
    for target in TARGETS:
        value = target.measured(results)
        judged = value is not None and target.comparable(results)
        rows.append(
            {
                "target": target.name,
                "figure": f"{target.scenario}.{target.figure}",
                "limit": f"{target.op} {target.limit:g} {target.unit}",
                "measured": value,
                "met": target.met(value) if judged and value is not None else None,
            }
        )
    return rows


class Progress:
    """One status line, redrawn in place on a terminal, printed every 2 s otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.label = ""
        self.began = self.shown = 0.0

    def show(self, label: str, total: int, enqueued: int, delivered: int | None) -> None:
        now = time.monotonic()
        if label != self.label:
            self.label, self.began = label, now
        if not self.tty and now - self.shown < QUIET_INTERVAL:
            return
        self.shown = now
        elapsed = max(now - self.began, 1e-6)
        line = f"{label}: {enqueued:,}/{total:,} enqueued"
        if delivered is not None:
            line += f", {max(delivered, 0):,} delivered"
        line += f"  ({elapsed:.1f} s, {enqueued / elapsed:,.0f} enqueued/s)"
        self._write(line)

    def say(self, line: str) -> None:
        """A step without a count to show."""
        self.label = ""
        self._write(line)

    def finish(self, scenario: str, result: dict[str, Any]) -> None:
        self._write(f"{scenario}: {headline(scenario, result)}", final=True)

    def _write(self, line: str, final: bool = False) -> None:
        if self.tty:
            width = max(os.get_terminal_size(self.stream.fileno()).columns - 1, 20)
            self.stream.write("\r" + line[:width].ljust(width) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def headline(scenario: str, result: dict[str, Any]) -> str:
    """The scenario's main figure in words."""
    if scenario in ("batch", "end_to_end_batch") and not result.get("available"):
        return f"unavailable ({result.get('reason')})"
    if scenario == "latency":
        return (
            f"p50 {result['p50_ms']:g} ms, p95 {result['p95_ms']:g} ms, p99 {result['p99_ms']:g} ms"
        )
    if scenario == "ceilings":
        return ", ".join(f"{name} {_per_s(result.get(key))}" for key, name, _, _ in CEILINGS)
    if scenario == "concurrency":
        return f"{result['tasks']:,} x {result['hook_seconds']:g} s hooks in {result['seconds']} s"
    return f"{result['tasks_per_s']:,.0f} tasks/s"


def detail(scenario: str, result: dict[str, Any]) -> str:
    """The supporting figures of a scenario."""
    if scenario in ("batch", "end_to_end_batch") and not result.get("available"):
        return ""
    if scenario in ("enqueue", "batch"):
        ms = result["request_ms"]
        errors = sum(result["errors"].values())
        size = f"batches of {result['batch']}, " if scenario == "batch" else ""
        return (
            f"{result['tasks']:,} tasks, {size}{result['connections']} connections, "
            f"request p50 {ms['p50']:g} ms p99 {ms['p99']:g} ms, {errors} errors"
        )
    if scenario in ("end_to_end", "end_to_end_batch"):
        arrays = f" in arrays of {result['batch']}" if result.get("batch") else ""
        return (
            f"{result['tasks']:,} tasks in {result['seconds']} s, enqueued{arrays} at "
            f"{result['enqueue_per_s']:,.0f}/s, {result['worker_processes']} worker "
            f"processes, {result['duplicates']} duplicates"
            + ("" if result["complete"] else ", INCOMPLETE")
        )
    if scenario == "latency":
        return (
            f"{result['tasks']:,} tasks offered at {result['achieved_rate']:,.0f}/s, "
            f"max {result['max_ms']:g} ms" + ("" if result["complete"] else ", INCOMPLETE")
        )
    return (
        f"peak {result['peak_in_flight']:,} in flight, enqueue took "
        f"{result['enqueue_seconds']} s, worker peak RSS {result['worker_peak_rss_mb']} MB"
    )


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _figures(results: dict[str, Any]) -> list[str]:
    rows = [["scenario", "result", "detail"]]
    for scenario in (
        "enqueue",
        "batch",
        "end_to_end",
        "end_to_end_batch",
        "latency",
        "concurrency",
    ):
        if scenario in results:
            rows.append(
                [
                    scenario,
                    headline(scenario, results[scenario]),
                    detail(scenario, results[scenario]),
                ]
            )
    memory = results.get("memory", {})
    rows.append(
        [
            "memory",
            f"worker {memory.get('worker_peak_rss_mb', 0):g} MB",
            f"web: {memory.get('web_process_peak_rss_mb', 0):g} MB per process, "
            f"{memory.get('web_total_peak_rss_mb', 0):g} MB in all (peak RSS)",
        ]
    )
    return _table(rows)


def _targets(results: dict[str, Any]) -> list[str]:
    rows = [["target (issue 5)", "wanted", "measured", "met (-: other size)"]]
    for row in results.get("targets", []):
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        measured = "-" if row["measured"] is None else f"{row['measured']:,g}"
        rows.append([row["target"], row["limit"], measured, met])
    return _table(rows)


def _cpu_rows(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every CPU measurement by row name; the ceilings hold one per constant server (its
    CPU under "web")."""
    rows: dict[str, dict[str, float]] = {}
    for scenario, result in results.items():
        if not isinstance(result, dict) or "cpu" not in result:
            continue
        if scenario == "ceilings":
            rows.update({f"ceiling {name}": cpu for name, cpu in result["cpu"].items()})
        else:
            rows[scenario] = result["cpu"]
    return rows


def _cpu(results: dict[str, Any]) -> list[str]:
    rows = [["CPU %", *CPU_COLUMNS]]
    for name, cpu in _cpu_rows(results).items():
        rows.append([name, *(f"{cpu.get(c, 0):.0f}" for c in CPU_COLUMNS)])
    return _table(rows)


def _contention(results: dict[str, Any]) -> list[str]:
    """A warning when other work took a noticeable share of the machine."""
    others = [cpu.get("others", 0.0) for cpu in _cpu_rows(results).values()]
    if not others or max(others) < CONTENDED:
        return []
    return [
        f"WARNING: processes outside the benchmark used up to {max(others):.0f} % of a "
        f"core during the run; the figures understate what this machine can do."
    ]


# (figure in the ceilings result, short name, what it is, ntq's figure set against it)
CEILINGS = (
    (
        "http_wsgi_per_s",
        "HTTP",
        "HTTP: a constant WSGI answer, gunicorn + gevent as ntq web",
        "enqueue",
    ),
    ("http_pyramid_per_s", "Pyramid", "HTTP: the same from a Pyramid view", "enqueue"),
    (
        "postgres_inserts_per_s",
        "PostgreSQL",
        "PostgreSQL: single-row inserts, 8 clients (pgbench)",
        "enqueue",
    ),
    (
        "delivery_per_s",
        "delivery",
        "delivery: ntq's webhook calls without the queue, 1 process",
        "end_to_end_batch",
    ),
)
FIGURE_NAMES = {"enqueue": "single enqueue", "end_to_end_batch": "end to end, in arrays"}


def _per_s(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def shares(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ceiling, and the share of it that ntq's comparable figure reached (None when
    either was not measured; delivery only for a run with one worker process)."""
    ceilings = results.get("ceilings", {})
    rows = []
    for key, _, what, scenario in CEILINGS:
        ceiling, ours = ceilings.get(key), results.get(scenario, {}).get("tasks_per_s")
        if (
            scenario == "end_to_end_batch"
            and results.get(scenario, {}).get("worker_processes", 1) != 1
        ):
            ours = None
        share = round(100.0 * ours / ceiling, 1) if ceiling and ours else None
        rows.append(
            {
                "ceiling": what,
                "per_s": ceiling,
                "figure": FIGURE_NAMES[scenario],
                "figure_per_s": ours,
                "percent": share,
            }
        )
    return rows


def _ceilings(results: dict[str, Any]) -> list[str]:
    if "ceiling_shares" not in results:
        return []
    rows = [["ceiling (no ntq)", "measured", "ntq's figure", "share"]]
    for row in results["ceiling_shares"]:
        percent = "-" if row["percent"] is None else f"{row['percent']:.0f} %"
        rows.append(
            [
                row["ceiling"],
                _per_s(row["per_s"]),
                f"{row['figure']} {_per_s(row['figure_per_s'])}",
                percent,
            ]
        )
    return ["", *_table(rows)]


def _failures(results: dict[str, Any]) -> list[str]:
    """Each scenario that failed, and why: its figures above do not count."""
    return [
        f"FAILED: {scenario}: {reason}"
        for scenario, reasons in results.get("failures", {}).items()
        for reason in reasons
    ]


def render(results: dict[str, Any]) -> str:
    """The whole report as text."""
    cores = os.cpu_count() or 1
    return "\n".join(
        [
            *_figures(results),
            "",
            *_targets(results),
            *_ceilings(results),
            "",
            *_cpu(results),
            *_contention(results),
            f"(CPU: percent of one core per process group over the scenario; others: processes "
            f"outside the benchmark; machine: percent of all {cores} cores. Receiver and generator "
            f"well under 100 % mean they were not the bottleneck.)",
            *_failures(results),
        ]
    )
