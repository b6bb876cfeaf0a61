"""What the view modules share: the task a route names, and actions after the commit."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from pyramid.request import Request

from ntq.records import TaskView
from ntq.store import transitions
from ntq.web.api.errors import ApiError


def after_commit(request: Request, action: Callable[[], Any]) -> None:
    """Run ``action`` once the request's transaction has committed (never before)."""

    def hook(committed: bool) -> None:
        if committed:
            action()

    request.tm.get().addAfterCommitHook(hook)


def task_id(request: Request) -> uuid.UUID:
    """The ``{id}`` of the route; anything but a UUID is simply not found."""
    try:
        return uuid.UUID(request.matchdict["id"])
    except ValueError:
        raise ApiError(404, "not_found", "no such task") from None


def owned_task(request: Request) -> TaskView:
    """The task the route names, if it belongs to the calling application; else 404."""
    task = transitions.get(request.db, task_id(request), request.caller.app_id)
    if task is None:
        raise ApiError(404, "not_found", "no such task")
    return task
