"""The summary of a py-spy profile: innermost frames by package, and inclusive functions."""

from __future__ import annotations

from pathlib import Path

from ntq.bench.profile import read_stacks, summarize

STACKS = """\
process 1:"ntq web";handle (gunicorn/workers/ggevent.py:10);enqueue (ntq/api/views.py:5) 6
process 1:"ntq web";handle (gunicorn/workers/ggevent.py:10);enqueue (ntq/api/views.py:5);\
DefaultDialect.do_execute (sqlalchemy/engine/default.py:9) 3
process 1:"ntq web";handle (gunicorn/workers/ggevent.py:10) 1
not a stack line
"""


def test_samples_are_counted_per_stack_without_process_entries(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text(STACKS)
    stacks = read_stacks(path)
    assert sum(stacks.values()) == 10
    assert all(not frame.startswith("process ") for stack in stacks for frame in stack)


def test_summary_splits_innermost_frames_by_package_and_counts_callers_inclusively(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.txt"
    path.write_text(STACKS)
    text = summarize(path)
    by_package, inclusive = text.split("on the stack (inclusive), by function:")
    assert "10 samples" in text
    assert "60.0 %  ntq" in by_package
    assert "30.0 %  psycopg2 (executing SQL)" in by_package  # not sqlalchemy: a C call
    assert "10.0 %  gunicorn" in by_package
    assert "100.0 %  handle (gunicorn/workers/ggevent.py)" in inclusive
    assert "90.0 %  enqueue (ntq/api/views.py)" in inclusive


def test_an_empty_profile_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("")
    assert "no samples" in summarize(path)
