"""Run the ``ntq`` command in process, as the tests of its options and messages do."""

from __future__ import annotations

import pytest

from ntq.cli.main import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    """``ntq *argv``: its exit code and everything it printed."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err
