"""``ntq migrate``: Alembic's ``upgrade head`` against the configured database.

The migration scripts live in ``alembic/`` at the top of the repository; a built package
carries a copy of them as ``ntq/migrations`` (see setup.py), so an installed ntq migrates
from any directory. alembic.ini serves the ``alembic`` command in a checkout only: every
option ``ntq migrate`` needs is set here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config


class MigrationsNotFound(RuntimeError):
    """ntq's migration scripts are neither in the installed package nor in a checkout."""


def script_location() -> Path:
    """The migration scripts: the installed package's copy, else the source checkout's."""
    packaged = Path(str(resources.files("ntq") / "migrations"))
    checkout = Path(__file__).resolve().parents[3] / "alembic"
    for candidate in (packaged, checkout):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationsNotFound(f"no migration scripts in {packaged} or {checkout}: reinstall ntq")


def alembic_config(url: str) -> Config:
    """Alembic's configuration for upgrading the database at ``url``."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
