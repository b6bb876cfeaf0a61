"""Summaries of ``ntq bench --profile``: where a process spent its CPU, from py-spy's
collapsed stacks (one line per distinct stack: ``frame;frame;... count``).

Two views: each sample's innermost frame counted for its package (so the shares add up to
100 %), and the functions that were on the stack most often (inclusive). A call into a C
extension shows as its Python caller; the callers known to do nothing but that call are
named after the extension instead (psycopg2 executing SQL under SQLAlchemy's
``do_execute``).

Run as ``python -m ntq.bench.profile FILE...`` to print the summaries of saved profiles.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# Innermost Python frames whose time is really the C extension they call.
C_CALLERS = {
    "DefaultDialect.do_execute": "psycopg2 (executing SQL)",
    "DefaultDialect.do_executemany": "psycopg2 (executing SQL)",
    "DefaultDialect.do_execute_no_params": "psycopg2 (executing SQL)",
    "SocketMixin.sendall": "socket send (kernel)",
    "SocketMixin.send": "socket send (kernel)",
    "SocketMixin.recv": "socket receive (kernel)",
    "SocketMixin.recv_into": "socket receive (kernel)",
}


def _split(frame: str) -> tuple[str, str]:
    """``Class.method (package/module.py:123)`` -> (function, file)."""
    function, _, where = frame.partition(" (")
    return function, where.rpartition(":")[0]


def _package(function: str, file: str) -> str:
    if function in C_CALLERS:
        return C_CALLERS[function]
    if "/" not in file:
        return "python (stdlib)" if file else "other"
    top = file.split("/", 1)[0]
    return f"{top} (stdlib)" if top in sys.stdlib_module_names else top


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """Samples per stack, outermost frame first, without py-spy's process entries."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(f for f in stack.split(";") if not f.startswith(("process ", "thread ")))
        if frames:
            stacks[frames] += int(count)
    return stacks


def summarize(path: Path, top: int = 20) -> str:
    """The two views of one profile as text."""
    stacks = read_stacks(path)
    total = sum(stacks.values())
    if not total:
        return f"{path.name}: no samples\n"
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        packages[_package(*_split(frames[-1]))] += count
        for function in {_with_file(frame) for frame in frames}:
            inclusive[function] += count
    lines = [
        f"{path.name}: {total:,} samples",
        "",
        "innermost frame, by package (adds up to 100 %):",
    ]
    lines += [f"  {100.0 * n / total:5.1f} %  {name}" for name, n in packages.most_common(top)]
    lines += ["", "on the stack (inclusive), by function:"]
    lines += [f"  {100.0 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _with_file(frame: str) -> str:
    function, file = _split(frame)
    return f"{function} ({file})" if file else function


def main() -> None:
    for name in sys.argv[1:]:
        print(summarize(Path(name)))


if __name__ == "__main__":
    main()
