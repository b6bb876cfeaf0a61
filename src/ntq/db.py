"""Database plumbing: metadata with a naming convention, engines and sessions.

psycopg2 is made cooperative by :func:`ntq.green.patch` in gevent processes, so a query
waits on the hub instead of blocking it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Connection, MetaData, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    """Declarative base for ntq's tables."""

    metadata = metadata


def normalize_url(url: str) -> str:
    """Accept Heroku-style ``postgres://`` URLs and pin the psycopg2 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 10,
                autocommit: bool = False) -> Engine:
    """An engine whose pool suits ``pool_size`` concurrent users of one process.
    ``autocommit`` engines run each statement as its own transaction (no BEGIN)."""
    return create_engine(
        normalize_url(url),
        isolation_level="AUTOCOMMIT" if autocommit else None,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No ping per checkout (a round trip each): a connection found dead fails its
        # statement once, and SQLAlchemy then invalidates the whole pool.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "ntq"},
    )


@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """A real transaction on a connection of an autocommit engine (which otherwise sends
    no BEGIN); the connection is back in autocommit afterwards."""
    conn.commit()  # end SQLAlchemy's bookkeeping of earlier autocommitted statements
    conn.execution_options(isolation_level="READ COMMITTED")
    try:
        with conn.begin():
            yield conn
    finally:
        conn.execution_options(isolation_level="AUTOCOMMIT")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (values cross greenlets and hooks)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
