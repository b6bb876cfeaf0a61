"""Alembic environment: the URL comes from ntq's settings, the metadata from ntq.store.models."""

from alembic import context
from sqlalchemy import text

from ntq.store import models  # noqa: F401  (registers the tables on the metadata)
from ntq.store.db import make_engine, metadata

config = context.config


def run_migrations_online() -> None:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from ntq.config import load_settings
        from ntq.embedded.servers import postgres_url

        settings = load_settings()
        url = settings.database_url or postgres_url(settings.data_dir)
    engine = make_engine(url, pool_size=1, max_overflow=0)
    with engine.begin() as connection:
        # Fail fast instead of queueing behind a long transaction and blocking traffic.
        connection.execute(text("SET lock_timeout = '5s'"))
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
