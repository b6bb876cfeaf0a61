"""Database plumbing: metadata with a naming convention, the engines of a process (one
factory, :func:`connect`), the transaction policy, and the policy for work that failed on a
connection that no longer serves.

Callers hold a :class:`Store` and call the store's functions, which run their own
statements: a single statement in autocommit (no BEGIN, no COMMIT: one round trip), work of
several statements in one transaction, each retried on a fresh connection when its own was
lost. Only the web's request transactions are the caller's (pyramid_tm's), through
:func:`joined_session`.

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
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy.exc
import zope.sqlalchemy
from psycopg2 import errorcodes
from psycopg2.extensions import TransactionRollbackError
from sqlalchemy import Connection, MetaData, create_engine, event, func, select, text
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.orm import DeclarativeBase, Session

T = TypeVar("T")

# What the store's functions take: an open connection, or a session in a transaction.
Db = Connection | Session

# The database's failures as callers catch them, without importing SQLAlchemy:
DatabaseError = sqlalchemy.exc.SQLAlchemyError  # any failure of the database or the pool
StatementError = sqlalchemy.exc.DBAPIError  # PostgreSQL, or its connection, failed a statement
Unreachable = sqlalchemy.exc.OperationalError  # no connection could be made, or it was lost
PoolTimeout = sqlalchemy.exc.TimeoutError  # no pooled connection came free in time

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
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(
    url: str, pool_size: int = 10, max_overflow: int = 10, autocommit: bool = False
) -> Engine:
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
    orig = exc.orig if isinstance(exc, StatementError) else exc
    return getattr(orig, "pgcode", None) == errorcodes.READ_ONLY_SQL_TRANSACTION


def is_conflict(exc: StatementError) -> bool:
    """Whether the transaction lost a deadlock or a serialization conflict."""
    return isinstance(exc.orig, TransactionRollbackError)


def retryable(exc: StatementError) -> bool:
    """Whether the failed work may succeed if run again from the start on a fresh
    connection: its connection was lost (or discarded as read-only), its transaction was
    rolled back to resolve a conflict, or a prepared statement it used had vanished from
    its connection (:mod:`ntq.store.prepared` prepares it again on the next try)."""
    return (
        exc.connection_invalidated
        or is_conflict(exc)
        or getattr(exc.orig, "pgcode", None) == errorcodes.INVALID_SQL_STATEMENT_NAME
    )


def retrying(engine: Engine, action: Callable[[Connection], T], atomic: bool = False) -> T:
    """``action`` on a connection of ``engine``, run again (up to :data:`ATTEMPTS` in all)
    when it failed in a way that :func:`retryable` says a new try may fix. On an
    autocommit engine each statement of ``action`` commits itself, unless ``atomic`` puts
    them all in one :func:`transaction`."""

    def once(conn: Connection) -> T:
        if not atomic:
            return action(conn)
        with transaction(conn):
            return action(conn)

    attempt = 1
    while True:
        try:
            with engine.connect() as conn:
                return once(conn)
        except StatementError as exc:
            if attempt == ATTEMPTS or not retryable(exc):
                raise
            attempt += 1


# Raises PostgreSQL's own "read-only transaction" error on a read-only database, so that
# the connection is discarded like any other that saw it (see _discard_if_read_only).
_REFUSE_IF_READ_ONLY = text(
    "DO $$ BEGIN IF current_setting('transaction_read_only') = 'on' THEN "
    "RAISE SQLSTATE '25006' USING MESSAGE = 'the database is read-only'; END IF; END $$"
)


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


@dataclass(frozen=True)
class Store:
    """A process's way to PostgreSQL, made by :func:`connect`: ``engine`` in autocommit,
    for the store's own statements and transactions; ``requests``, for the web only, the
    pool behind its request transactions (separate pools never switch a connection's
    mode)."""

    engine: Engine
    requests: Engine | None = None

    def dispose(self) -> None:
        """Close every pooled connection."""
        for engine in self.engines():
            engine.dispose()

    def engines(self) -> list[Engine]:
        """Every pool of the store."""
        return [self.engine, *([self.requests] if self.requests else [])]


def connect(url: str, pool_size: int, max_overflow: int = 0, requests: int = 0) -> Store:
    """The store of a process whose ``pool_size`` greenlets or threads use the database at
    once (``max_overflow`` more now and then), with a pool of ``requests`` connections for
    request transactions if it serves the web. No overflow by default: under load, users
    wait for a pooled connection instead of opening (and, on return, closing) new ones,
    each a new PostgreSQL backend."""
    engine = make_engine(url, pool_size=pool_size, max_overflow=max_overflow, autocommit=True)
    if not requests:
        return Store(engine)
    return Store(engine, make_engine(url, pool_size=requests, max_overflow=0))


def joined_session(store: Store, manager: Any) -> Session:
    """A session on the store's request pool that joins the transaction of ``manager``
    (a ``transaction`` package manager: pyramid_tm's) and commits or aborts with it. It
    keeps loaded values after commit (values cross greenlets and hooks)."""
    assert store.requests is not None, "the store was not connected for requests"
    session = Session(bind=store.requests, expire_on_commit=False)
    # "changed": ntq writes with Core statements the ORM does not track, so the
    # transaction must commit without an explicit mark_changed().
    zope.sqlalchemy.register(
        session,
        transaction_manager=manager,
        initial_state=zope.sqlalchemy.datamanager.STATUS_CHANGED,
    )
    return session


def locked(store: Store, key: int, work: Callable[[Connection], T]) -> T | None:
    """``work`` in one transaction that holds advisory lock ``key`` (released at its end),
    or None without running it while another transaction holds the lock. Run again from
    the start on a fresh connection if its own was lost."""

    def attempt(conn: Connection) -> T | None:
        if not conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar():
            return None
        return work(conn)

    return retrying(store.engine, attempt, atomic=True)


def health(store: Store) -> str:
    """ "ok" if every pool of the store reaches a writable database, else "read-only" or
    "unreachable: <error>". A pooled connection that was lost, or opened while the database
    was read-only, is replaced first: the answer is about PostgreSQL as it is now."""
    try:
        for engine in store.engines():
            retrying(engine, check_writable)
    except StatementError as exc:
        return "read-only" if is_read_only(exc) else f"unreachable: {type(exc).__name__}"
    except DatabaseError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"
