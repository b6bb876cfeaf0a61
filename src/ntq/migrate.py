"""``ntq migrate``: Alembic's ``upgrade head`` against the configured database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


class MigrationsNotFound(RuntimeError):
    """alembic.ini is neither beside the source tree nor in the working directory."""


def alembic_config(url: str) -> Config:
    here = Path(__file__).resolve().parents[2]
    for root in (here, Path.cwd()):
        ini = root / "alembic.ini"
        if ini.exists():
            config = Config(str(ini))
            config.set_main_option("script_location", str(root / "alembic"))
            config.attributes["url"] = url
            return config
    raise MigrationsNotFound("alembic.ini not found: run ntq from its source checkout")


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
