"""Command-line options are parsed and checked like the variables they stand for, and a
bad variable stops any command with a message naming it (in process, nothing started)."""

from __future__ import annotations

import pytest

from tests.support.cli import run_cli


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["serve", "--port", "83267"], "--port"),
        (["web", "--port", "0"], "--port"),
        (["web", "--workers", "0"], "--workers"),
        (["worker", "--concurrency", "0"], "--concurrency"),
        (["worker", "--grace", "-1"], "--grace"),
        (["worker", "--grace", "soon"], "--grace"),
    ],
)
def test_an_out_of_range_option_is_refused_naming_it(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = run_cli(argv, capsys)
    assert code == 2
    assert f"argument {option}" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("variable", "value"), [("WEB_CONCURRENCY", "abc"), ("NTQ_WORKER_GRACE", "-5")]
)
def test_a_bad_variable_stops_any_command_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    code, output = run_cli(["migrate"], capsys)
    assert code == 2
    assert f"{variable}={value!r} is invalid" in output
    assert "Traceback" not in output


def test_version_reads_no_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "abc")
    code, output = run_cli(["--version"], capsys)
    assert code == 0
    assert output.startswith("ntq ")
