"""Engine modes (ntq.store.db) against the real PostgreSQL."""

from __future__ import annotations

import pytest

from ntq.store.db import make_engine


@pytest.mark.parametrize("autocommit", [False, True])
def test_engine_modes(migrated: str, autocommit: bool) -> None:
    """Autocommit engines (the web's enqueue statements, the worker) send no BEGIN; every
    commit waits for the disk."""
    engine = make_engine(migrated, pool_size=1, max_overflow=0, autocommit=autocommit)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is autocommit
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    engine.dispose()
