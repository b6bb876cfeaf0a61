"""Run the ``ntq`` command in process, as the tests of its options and messages do."""

from __future__ import annotations

import logging

import pytest
import structlog

from ntq.cli.main import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    """``ntq *argv``: its exit code and everything it printed."""
    try:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        captured = capsys.readouterr()
    finally:
        forget_logging()
    return exited.value.code, captured.out + captured.err


def forget_logging() -> None:
    """Undo the command's logging set-up: it writes to this test's captured stderr, which
    is closed once the test ends, and a later test that logs would fail on it."""
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
