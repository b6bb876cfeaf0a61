"""Builds ntq (the metadata is in setup.cfg).

The Alembic migrations stay at the top of the repository, where the ``alembic`` command
finds them; a built package carries a copy as ``ntq/migrations`` so that ``ntq migrate``
works wherever ntq is installed. An editable install reads them from the checkout instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MIGRATIONS = Path(__file__).resolve().parent / "alembic"


class BuildWithMigrations(build_py):
    """build_py, plus the migration scripts copied into the built package."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib, "ntq", "migrations")
            shutil.rmtree(target, ignore_errors=True)  # no revision left from an earlier build
            shutil.copytree(MIGRATIONS, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithMigrations})
