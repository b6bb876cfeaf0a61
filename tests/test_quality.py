"""The code and its tests stay ruff clean, ruff formatted and mypy clean: the suite fails
otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "src", "tests", "alembic")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = run("ruff", "format", "--check", "src", "tests", "alembic")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    """Strict mypy over src/ntq and tests, as ``[tool.mypy]`` in pyproject.toml lists them."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
