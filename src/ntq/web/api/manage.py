"""Managing tasks after enqueue: cancel, replay, delete, responses, attempts, listing."""

from __future__ import annotations

import uuid
from typing import Any

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq import serialize
from ntq.records import Status
from ntq.store import reads, transitions
from ntq.web.api import schemas
from ntq.web.api.errors import ApiError
from ntq.web.api.render import json_response, link_header, task_json, task_response
from ntq.web.api.shared import after_commit, owned_task
from ntq.web.services import services

MAX_WAIT = 60


@view_config(route_name="task", request_method="DELETE")
def cancel_task(request: Request) -> Response:
    """Cancel a PENDING task: 204; running attempts are interrupted, the hook is sent a
    DELETE if its ``cancel_notice`` asks for one. A finished task cannot be cancelled: 409."""
    task = owned_task(request)
    cancelled = transitions.cancel(request.db, task.id, request.caller.app_id)
    if cancelled is None:
        raise ApiError(409, "not_pending", f"the task is already {task.status}")
    notifier = services(request).notifier
    after_commit(
        request, lambda: notifier.cancelled(task.id, cancelled.callback_id, cancelled.notice_owed)
    )
    return Response(status=204)


@view_config(route_name="task_retry", request_method="POST")
def retry_task(request: Request) -> Response:
    """Replay a FAILED or CANCELLED task with a fresh retry budget."""
    task = owned_task(request)
    replayed = transitions.replay(request.db, task.id, request.caller.app_id)
    if replayed is None:
        raise ApiError(
            409,
            "not_replayable",
            f"only FAILED or CANCELLED tasks can be replayed; this one is {task.status}",
        )
    notifier = services(request).notifier
    after_commit(request, lambda: notifier.enqueued([task.id], {}))
    return task_response(request, replayed)


@view_config(route_name="root", request_method="DELETE")
def delete_all(request: Request) -> Response:
    """Delete every task of the calling application; interrupt their running attempts and
    send the DELETE notices owed (as a cancel would)."""
    app_id = request.caller.app_id
    notices = transitions.delete_all(request.db, app_id)
    notifier = services(request).notifier
    after_commit(request, lambda: notifier.deleted_all(app_id, notices))
    return Response(status=204)


@view_config(route_name="task_response", request_method="GET")
def show_response(request: Request) -> Response:
    """The latest attempt's response; ``?wait=N`` first waits up to N s for the task to
    finish (woken by the worker's announcement, not by polling the database)."""
    task = owned_task(request)
    wait = schemas.wait_seconds(request.GET.get("wait"), MAX_WAIT)
    status = task.status
    if wait and status == Status.PENDING:
        status = _wait_finished(request, task.id, wait)
    row = transitions.latest_response(request.db, task.id)
    if row is None:
        raise ApiError(404, "no_response", "the task has no response yet", task_status=status)
    data = {**serialize.attempt_dict(row, with_body=True), "task_status": status}
    return json_response(data, Link=link_header(task_json(request, task)["links"]))


def _wait_finished(request: Request, wanted: uuid.UUID, wait: float) -> Status:
    """Wait for the task's terminal announcement; return its status then (or now)."""
    request.tm.commit()  # hold no database connection while waiting
    request.tm.begin()
    return services(request).notifier.wait_finished(wanted, wait, lambda: _status(request, wanted))


def _status(request: Request, wanted: uuid.UUID) -> Status:
    task = transitions.get(request.db, wanted, request.caller.app_id)
    return Status(task.status) if task else Status.PENDING


@view_config(route_name="task_response", request_method="DELETE")
def forget_response(request: Request) -> Response:
    task = owned_task(request)
    transitions.forget_responses(request.db, task.id)
    return Response(status=204)


@view_config(route_name="task_attempts", request_method="GET")
def list_attempts(request: Request) -> Response:
    task = owned_task(request)
    rows = reads.attempts_of(request.db, task.id)
    data = {"attempts": [serialize.attempt_dict(row, with_body=False) for row in rows]}
    return json_response(data, Link=link_header(task_json(request, task)["links"]))


@view_config(route_name="tasks", request_method="GET")
def list_tasks(request: Request) -> Response:
    """The caller's tasks, newest first, ``limit`` at a time, with a ``next`` link."""
    wanted = schemas.task_filter(request.GET)
    found = reads.list_tasks(request.db, request.caller.app_id, wanted)
    data: dict[str, Any] = {"tasks": [task_json(request, t) for t in found], "next": None}
    headers = {}
    if len(found) == wanted.limit:
        params = {k: v for k, v in request.GET.items() if k != "before"}
        data["next"] = request.route_url("tasks", _query={**params, "before": str(found[-1].id)})
        headers["Link"] = f'<{data["next"]}>; rel="next"'
    return json_response(data, 200, **headers)
