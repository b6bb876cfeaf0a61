"""The ``counters`` table behind ``/metrics``: each process adds to its own rows, the rows
of processes gone quiet are folded into ``folded`` ones, and readers sum them by name."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, delete, func, literal, select
from sqlalchemy.dialects.postgresql import insert

from ntq.store.db import Db, Store, retrying
from ntq.store.models import counters, seconds

FOLDED = "folded"


def add(store: Store, process: str, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to ``process``'s rows: one autocommit statement, run again on a fresh
    connection if its own was lost."""
    retrying(store.engine, lambda conn: write(conn, process, counts))


def write(conn: Connection, process: str, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to ``process``'s rows in one statement (rows in name order, so two
    writers of the same rows lock them in the same order)."""
    stmt = insert(counters).values(
        [
            {"process": process, "name": name, "value": value}
            for name, value in sorted(counts.items())
        ]
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[counters.c.process, counters.c.name],
            set_={"value": counters.c.value + stmt.excluded.value, "updated": func.now()},
        )
    )


def fold(db: Db, idle: float) -> None:
    """Move the counts of processes that have not written for ``idle`` seconds into the
    ``folded`` rows: one statement, so a reader sees the sums from before or after it."""
    gone = (
        delete(counters)
        .where(counters.c.process != FOLDED, counters.c.updated < func.now() - seconds(idle))
        .returning(counters.c.name, counters.c.value)
        .cte("gone")
    )
    merged = select(literal(FOLDED), gone.c.name, func.sum(gone.c.value), func.now()).group_by(
        gone.c.name
    )
    stmt = insert(counters).from_select(["process", "name", "value", "updated"], merged)
    db.execute(
        stmt.on_conflict_do_update(
            index_elements=[counters.c.process, counters.c.name],
            set_={"value": counters.c.value + stmt.excluded.value, "updated": func.now()},
        )
    )


def totals(db: Db) -> dict[str, int]:
    """Every process's counts added up, by name."""
    rows = db.execute(select(counters.c.name, func.sum(counters.c.value)).group_by(counters.c.name))
    return {name: int(total) for name, total in rows}
