"""Database plumbing: metadata with a naming convention, engines and sessions, and the
policy for work that failed on a connection that no longer serves.

psycopg2 is made cooperative by :func:`ntq.green.patch` in gevent processes, so a query
waits on the hub instead of blocking it.

Pools do not ping a connection before lending it (a round trip per request), so after a
restart, a failover or a proxy's idle timeout the first statement on each stale connection
fails. SQLAlchemy then invalidates the whole pool, and :func:`retrying` runs the work again
on a fresh connection. A connection to a read-only database (a demoted primary, a standby)
is discarded the same way, so that it does not stay read-only once a writable primary
answers at the same address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from psycopg2 import errorcodes
from psycopg2.extensions import TransactionRollbackError
from sqlalchemy import Connection, MetaData, create_engine, event, text
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

T = TypeVar("T")

# Deadlock victims and serialization failures get this many tries in all; a lost
# connection needs one more (the pool is renewed after the first failure).
ATTEMPTS = 3

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
    engine = create_engine(
        normalize_url(url),
        isolation_level="AUTOCOMMIT" if autocommit else None,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No ping per checkout (a round trip each): a connection found dead fails its
        # statement once, SQLAlchemy then invalidates the whole pool, and the work runs
        # again on a fresh connection (retrying, pyramid_retry).
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "ntq"},
    )
    event.listen(engine, "handle_error", _discard_if_read_only)
    return engine


def _discard_if_read_only(context: ExceptionContext) -> None:
    """Treat "read-only transaction" like a lost connection: a session opened on a
    read-only database stays read-only after a failover promotes a writable one."""
    if is_read_only(context.original_exception):
        context.is_disconnect = True


def is_read_only(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver error, or SQLAlchemy's wrapper of one) is PostgreSQL
    refusing a write because the database is read-only."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "pgcode", None) == errorcodes.READ_ONLY_SQL_TRANSACTION


def is_conflict(exc: DBAPIError) -> bool:
    """Whether the transaction lost a deadlock or a serialization conflict."""
    return isinstance(exc.orig, TransactionRollbackError)


def retryable(exc: DBAPIError) -> bool:
    """Whether the failed work may succeed if run again from the start on a fresh
    connection: its connection was lost (or discarded as read-only), or its transaction
    was rolled back to resolve a conflict."""
    return exc.connection_invalidated or is_conflict(exc)


def retrying(engine: Engine, action: Callable[[Connection], T]) -> T:
    """``action`` on a connection of ``engine``, run again (up to :data:`ATTEMPTS` in all)
    when it failed in a way that :func:`retryable` says a new try may fix. ``action``
    commits its own work (on autocommit engines, each statement commits itself)."""
    attempt = 1
    while True:
        try:
            with engine.connect() as conn:
                return action(conn)
        except DBAPIError as exc:
            if attempt == ATTEMPTS or not retryable(exc):
                raise
            attempt += 1


# Raises PostgreSQL's own "read-only transaction" error on a read-only database, so that
# the connection is discarded like any other that saw it (see _discard_if_read_only).
_REFUSE_IF_READ_ONLY = text(
    "DO $$ BEGIN IF current_setting('transaction_read_only') = 'on' THEN "
    "RAISE SQLSTATE '25006' USING MESSAGE = 'the database is read-only'; END IF; END $$")


def check_writable(conn: Connection) -> None:
    """Raise unless the database behind ``conn`` accepts writes."""
    conn.execute(_REFUSE_IF_READ_ONLY)


@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """A real transaction on a connection of an autocommit engine (which otherwise sends
    no BEGIN). BEGIN and COMMIT are statements like any other, so a lost connection fails
    them the way :func:`retrying` recognizes (switching the connection's isolation level
    instead would raise the driver's error as it is)."""
    conn.exec_driver_sql("BEGIN")
    try:
        yield conn
    except BaseException:
        if not conn.invalidated:  # a lost session took its transaction with it
            conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (values cross greenlets and hooks)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
