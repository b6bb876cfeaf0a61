"""``ntq bench``: start the stack (or target one, with URLs) and measure it.

Enqueue throughput (``POST /``, then ``POST /tasks`` arrays), end-to-end throughput,
enqueue-to-hook latency at a fixed offered rate, 1,000 one-second hooks through one worker,
peak memory, and the machine's ceilings without ntq (:mod:`ntq.bench.ceiling`): shown as a
table, and as JSON (``--json PATH``, else printed last).

Without ``DATABASE_URL`` / ``REDIS_URL``, embedded servers run in a temporary data directory
removed afterwards. The hook receiver (:mod:`ntq.bench.hook`) and the load generator
(:mod:`ntq.bench.load`) are processes of their own; their CPU use is reported beside ntq's.
This module stays light: ``ntq --help`` imports it to build the options.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ntq.config import ConfigError, Settings, load_settings, option_default, option_flag

SCENARIO_NAMES = (
    "enqueue",
    "batch",
    "end_to_end",
    "end_to_end_batch",
    "latency",
    "concurrency",
    "ceilings",
)

# option: (environment variable, type, full-run default, --quick default, help)
SIZES: dict[str, tuple[str, Callable[[str], Any], Any, Any, str]] = {
    "tasks": (
        "NTQ_BENCH_TASKS",
        int,
        50_000,
        1_000,
        "tasks per throughput scenario (enqueue, batch, end-to-end)",
    ),
    "concurrency": (
        "NTQ_BENCH_CONCURRENCY",
        int,
        50,
        16,
        "concurrent keep-alive client connections",
    ),
    "rate": (
        "NTQ_BENCH_RATE",
        float,
        500.0,
        500.0,
        "offered rate of the latency scenario, tasks/s",
    ),
    "duration": ("NTQ_BENCH_DURATION", float, 20.0, 2.0, "seconds of load in the latency scenario"),
    "batch": ("NTQ_BENCH_BATCH", int, 100, 100, "tasks per POST /tasks array"),
    "sleepers": (
        "NTQ_BENCH_SLEEPERS",
        int,
        1_000,
        300,
        "tasks whose hook sleeps 1 s, through one worker",
    ),
    "worker_concurrency": (
        "NTQ_WORKER_CONCURRENCY",
        int,
        100,
        100,
        "worker slots in the delivery scenarios",
    ),
    "worker_processes": (
        "NTQ_BENCH_WORKER_PROCESSES",
        int,
        1,
        1,
        "worker processes in the end-to-end and latency scenarios "
        "(the concurrency scenario has one)",
    ),
    "stall_timeout": (
        "NTQ_BENCH_STALL_TIMEOUT",
        float,
        30.0,
        15.0,
        "give up waiting for deliveries after this many seconds without one",
    ),
}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The ``ntq bench`` options; each can also come from the environment variable named."""
    parser.add_argument(
        "--quick",
        action="store_true",
        default=option_flag("NTQ_BENCH_QUICK"),
        help="a small, fast run (env NTQ_BENCH_QUICK)",
    )
    for name, (env, kind, full, quick, text) in SIZES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=option_default(env),
            help=f"{text} (env {env}, default {full:g}; --quick {quick:g})",
        )
    parser.add_argument(
        "--only",
        default=option_default("NTQ_BENCH_ONLY"),
        help=f"comma-separated scenarios to run, from {', '.join(SCENARIO_NAMES)} "
        "(env NTQ_BENCH_ONLY, default all)",
    )
    parser.add_argument(
        "--web-workers",
        type=int,
        default=None,
        help="web processes (env WEB_CONCURRENCY, default 2)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=option_default("NTQ_BENCH_JSON"),
        help="write the figures as JSON here (env NTQ_BENCH_JSON); "
        "without it, the JSON is printed last",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=option_default("NTQ_BENCH_LOG_DIR"),
        help="keep the processes' logs here (env NTQ_BENCH_LOG_DIR; default: "
        "a temporary directory, kept only if the run fails)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=option_default("NTQ_BENCH_PROFILE"),
        help="record py-spy profiles (collapsed stacks) of the web and worker "
        "per scenario into this directory, each with a summary by package "
        "and function (env NTQ_BENCH_PROFILE)",
    )


def _sizes(args: argparse.Namespace) -> Any:
    from ntq.bench.scenarios import Sizes

    values = {}
    for name, (env, kind, full, quick, _) in SIZES.items():
        value = getattr(args, name)
        value = kind(value) if value is not None else (quick if args.quick else full)
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} (or {env}) must be positive")
        values[name] = value
    return Sizes(**values)


def _scenarios(only: str | None) -> list[str]:
    names = [n.strip().replace("-", "_") for n in (only or "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIO_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIO_NAMES)}"
        )
    return [n for n in SCENARIO_NAMES if n in names] if names else list(SCENARIO_NAMES)


def _servers(settings: Settings) -> Settings:
    """URLs for the database and Redis: the given ones, or embedded servers in a temporary
    data directory (removed at exit, after the embedded servers have stopped)."""
    from ntq.embedded.servers import resolve

    if settings.database_url and settings.redis_url:
        return settings
    data_dir = Path(tempfile.mkdtemp(prefix="ntq-bench-data-"))
    atexit.register(_remove, data_dir)
    return resolve(replace(settings, data_dir=data_dir))


def _remove(data_dir: Path) -> None:
    """Remove the embedded servers' data once they have stopped."""
    from ntq.embedded.lifetime import release

    release()
    shutil.rmtree(data_dir, ignore_errors=True)


def _describe(original: Settings, names: list[str], web_workers: int) -> dict[str, Any]:
    from ntq import __version__

    return {
        "ntq_version": __version__,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "postgresql": "given (DATABASE_URL)" if original.database_url else "embedded",
        "redis": "given (REDIS_URL)" if original.redis_url else "embedded",
        "scenarios": names,
        "web_workers": web_workers,
    }


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every scenario completed, 1 (each failure said on stderr)
    when one did not: errors from the server, tasks not enqueued or not delivered, or a
    process that died (which ends the run)."""
    from ntq.bench.report import Progress, assess, render, shares
    from ntq.bench.scenarios import run_all
    from ntq.bench.stack import Stack

    names, sizes = _scenarios(args.only), _sizes(args)
    original = load_settings(web_concurrency=args.web_workers)
    settings = _servers(original)
    web_workers = original.web_concurrency
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ntq-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": _describe(original, names, web_workers)}
    stack = Stack(settings, log_dir, web_workers)
    # SIGTERM unwinds like Ctrl-C, so that every child process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results.update(run_all(stack, sizes, names, Progress(), args.profile))
    except BaseException:
        print(f"ntq bench: failed; the processes' logs are in {log_dir}", file=sys.stderr)
        raise
    results["targets"] = assess(results)
    if "ceilings" in results:
        results["ceiling_shares"] = shares(results)
    _output(results, args.json, render(results))
    failures = results["failures"]
    for scenario, reasons in failures.items():
        for reason in reasons:
            print(f"ntq bench: {scenario} failed: {reason}", file=sys.stderr)
    if failures:
        print(f"ntq bench: the processes' logs are in {log_dir}", file=sys.stderr)
    elif args.log_dir is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failures else 0


def _output(results: dict[str, Any], path: Path | None, table: str) -> None:
    import orjson

    data = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    print(table, flush=True)
    if path is not None:
        path.write_bytes(data + b"\n")
        print(f"JSON written to {path}")
    else:
        print(data.decode(), flush=True)
