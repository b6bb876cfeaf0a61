"""The request's transaction: pyramid_tm owns it, pyramid_retry runs it again when it
failed in a way a new try may fix; ``request.db`` is a session joined to it."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.request import Request
from sqlalchemy.orm import Session

from ntq.store import db
from ntq.web import services


def includeme(config: Configurator) -> None:
    config.add_settings(
        {
            "tm.manager_hook": "pyramid_tm.explicit_manager",
            "tm.annotate_user": False,
            # A request transaction that failed on a lost connection, or lost a deadlock,
            # runs again from the start (pyramid_retry; errors.py marks which failures).
            "retry.attempts": db.ATTEMPTS,
            "retry.activate_hook": _retry_attempts,
        }
    )
    config.include("pyramid_tm")
    config.include("pyramid_retry")
    config.add_request_method(_session, "db", reify=True)


def _retry_attempts(request: Request) -> int | None:
    """One try for a request with a body (the enqueues, which retry their own statement):
    retrying would buffer the whole body before the views' size limit applies. The
    default number of tries for the rest."""
    has_body = request.content_length or "Transfer-Encoding" in request.headers
    return 1 if has_body else None


def _session(request: Request) -> Session:
    """``request.db``: a session joined to the request's transaction."""
    return db.joined_session(services.services(request).store, request.tm)
