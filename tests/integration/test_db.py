"""Engine modes (ntq.db) against the real PostgreSQL."""

from __future__ import annotations

import pytest

from ntq.db import make_engine


@pytest.mark.parametrize(("options", "autocommit", "synchronous"), [
    ({}, False, "on"),
    ({"autocommit": True}, True, "on"),  # the web's enqueue statements
    ({"durable_commits": False}, False, "off"),
    ({"autocommit": True, "durable_commits": False}, True, "off"),  # the worker's
])
def test_engine_modes(migrated: str, options: dict[str, bool], autocommit: bool,
                      synchronous: str) -> None:
    engine = make_engine(migrated, pool_size=1, max_overflow=0, **options)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is autocommit
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == synchronous
    engine.dispose()
