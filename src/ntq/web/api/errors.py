"""JSON errors: ``{"error": {"code", "message"}}`` with the right status, never HTML."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from pyramid.exceptions import PredicateMismatch
from pyramid.httpexceptions import HTTPException
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import exception_view_config
from pyramid_retry import mark_error_retryable

from ntq.store import db
from ntq.store.db import PoolTimeout, StatementError, Unreachable

log = structlog.get_logger(__name__)

DB_RETRY_AFTER = "5"


class ApiError(Exception):
    """An error the client should see: status, machine code, human message, extras."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return Response(status=status, body=orjson.dumps(body), content_type="application/json")


@exception_view_config(ApiError)
def api_error(exc: ApiError, request: Request) -> Response:
    return error_response(exc.status, exc.code, exc.message, **exc.extra)


@exception_view_config(UnicodeDecodeError)
def not_utf8(exc: UnicodeDecodeError, request: Request) -> Response:
    """The query string, a form or a header that must be text is not valid UTF-8."""
    return error_response(400, "invalid_encoding", "the request is not valid UTF-8")


@exception_view_config(HTTPException)
def http_error(exc: HTTPException, request: Request) -> Response:
    if isinstance(exc, PredicateMismatch) and request.matched_route is not None:
        # The path exists but not for this method: 405 with Allow, not Pyramid's 404.
        response = error_response(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
        )
        response.headers["Allow"] = ", ".join(_allowed(request, request.matched_route.name))
        return response
    code = exc.title.lower().replace(" ", "_")
    response = error_response(exc.code, code, exc.explanation or exc.title)
    for name in ("Allow", "Location", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


def _allowed(request: Request, route_name: str) -> list[str]:
    """The methods the route's views accept, from Pyramid's introspection registry."""
    introspector = request.registry.introspector
    route = introspector.get("routes", route_name)
    methods: set[str] = set()
    for view in introspector.related(route) if route is not None else []:
        if view.category_name == "views":
            declared = view["request_methods"] or ()
            methods.update([declared] if isinstance(declared, str) else declared)
    return sorted(methods)


def _retry_later(code: str, message: str) -> Response:
    response = error_response(503, code, message)
    response.headers["Retry-After"] = DB_RETRY_AFTER
    return response


@exception_view_config(PoolTimeout)
def database_busy(exc: PoolTimeout, request: Request) -> Response:
    log.warning("web.database_unavailable", error=type(exc).__name__)
    return _retry_later(
        "database_unavailable", "no PostgreSQL connection was free in time; retry shortly"
    )


@exception_view_config(StatementError)
def database_error(exc: StatementError, request: Request) -> Response:
    """PostgreSQL failed the request. When a new try may succeed (a lost connection, a
    deadlock), pyramid_retry runs the request again and discards this answer; after the
    last try, the client is told what happened and when to retry."""
    if db.retryable(exc):
        mark_error_retryable(exc)
    if db.is_read_only(exc):
        log.warning("web.database_read_only")
        return _retry_later(
            "database_read_only", "PostgreSQL is read-only (a failover?); retry shortly"
        )
    if db.is_conflict(exc):
        log.warning("web.database_conflict", error=type(exc.orig).__name__)
        return _retry_later(
            "database_conflict", "the transaction kept conflicting with concurrent ones; retry"
        )
    if exc.connection_invalidated or isinstance(exc, Unreachable):
        log.warning("web.database_unavailable", error=type(exc.orig).__name__)
        return _retry_later("database_unavailable", "PostgreSQL is unreachable; retry shortly")
    log.exception("web.database_error")
    return error_response(500, "internal_error", "internal error")


@exception_view_config(Exception)
def internal_error(exc: Exception, request: Request) -> Response:
    log.exception("web.internal_error", path=request.path)
    return error_response(500, "internal_error", "internal error")
