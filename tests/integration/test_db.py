"""Engine modes (ntq.store.db) against the real PostgreSQL."""

from __future__ import annotations

import pytest

from ntq.store import db
from ntq.store.db import make_engine


@pytest.mark.parametrize("autocommit", [False, True])
def test_engine_modes(migrated: str, autocommit: bool) -> None:
    """Autocommit engines (the web's enqueue statements, the worker) send no BEGIN; every
    commit waits for the disk."""
    engine = make_engine(migrated, pool_size=1, max_overflow=0, autocommit=autocommit)
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        assert dbapi.autocommit is autocommit
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    engine.dispose()


def test_a_store_runs_its_statements_in_autocommit_and_requests_in_transactions(
    migrated: str,
) -> None:
    """The store's own pool sends no BEGIN (its functions open a transaction only for work
    of several statements); the web's request pool is transactional."""
    store = db.connect(migrated, pool_size=1, requests=1)
    assert store.requests is not None
    for engine, autocommit in ((store.engine, True), (store.requests, False)):
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.autocommit is autocommit
    assert db.health(store) == "ok"
    store.dispose()
