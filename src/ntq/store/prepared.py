"""Statements prepared once per database connection (``PREPARE``/``EXECUTE``).

For a short statement PostgreSQL can spend as long planning as running it; a prepared
statement is planned once per connection. Values go to psycopg2 as they are (SQLAlchemy's
type processing is bypassed): psycopg2 adapts all but dicts, sent here as JSON.
Where the prepared statement is missing (a pooler in transaction mode, ``DISCARD ALL``),
the call runs the same statement unprepared; inside a transaction, which the failure has
aborted, it raises instead, and :func:`ntq.store.db.retrying` (which every store function
using a prepared statement runs under) runs the work again, preparing the statement anew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg2 import errorcodes
from psycopg2.extensions import TRANSACTION_STATUS_INERROR
from psycopg2.extras import Json
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

_POSITIONAL = PGDialect_psycopg2(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
_NAMED = PGDialect_psycopg2()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Prepared:
    """A statement as ``PREPARE name AS ...``/``EXECUTE name(...)``, and unprepared."""

    name: str
    prepare: str
    execute: str
    unprepared: str
    order: tuple[str, ...]
    # Values the statement binds itself (literals compared against, and the like).
    constants: dict[str, Any]

    @classmethod
    def of(cls, name: str, statement: ClauseElement) -> Prepared:
        positional = statement.compile(dialect=_POSITIONAL)
        assert isinstance(positional, SQLCompiler)
        order = tuple(positional.positiontup or ())
        constants = {key: value for key, value in positional.params.items() if value is not None}
        return cls(
            name,
            f"PREPARE {name} AS {positional.string}",
            f"EXECUTE {name}({', '.join(['%s'] * len(order))})",
            statement.compile(dialect=_NAMED).string,
            order,
            constants,
        )

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """The statement's rows, by the prepared statement when the connection has it."""
        info = conn.connection.info
        params = {**self.constants, **params}
        try:
            if self.name not in info:
                self._prepare(conn)
                info[self.name] = True
            args = tuple(adapt(params[name]) for name in self.order)
            return list(conn.exec_driver_sql(self.execute, args))
        except DBAPIError as exc:
            if _pgcode(exc) != errorcodes.INVALID_SQL_STATEMENT_NAME:
                raise
            info.pop(self.name, None)
            if _in_failed_transaction(conn):
                raise  # retrying runs the work again, which prepares it anew
            values = {name: adapt(value) for name, value in params.items()}
            return list(conn.exec_driver_sql(self.unprepared, values))

    def _prepare(self, conn: Connection) -> None:
        try:
            conn.exec_driver_sql(self.prepare)
        except DBAPIError as exc:  # behind a pooler, this server connection already has it
            if _pgcode(exc) != errorcodes.DUPLICATE_PREPARED_STATEMENT:
                raise


def adapt(value: Any) -> Any:
    """``value`` as psycopg2 should send it: dicts as JSON, lists element by element."""
    if isinstance(value, dict):
        return Json(value)
    if isinstance(value, list):
        return [adapt(item) for item in value]
    return value


def _in_failed_transaction(conn: Connection) -> bool:
    """Whether ``conn`` is in a transaction that an error has aborted (no statement but
    ROLLBACK can run in it)."""
    dbapi = conn.connection.dbapi_connection
    status = getattr(getattr(dbapi, "info", None), "transaction_status", None)
    return bool(status == TRANSACTION_STATUS_INERROR)


def _pgcode(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)
