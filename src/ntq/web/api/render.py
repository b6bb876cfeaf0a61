"""JSON out: tasks with links, timestamps in UTC ISO 8601 with ``Z``."""

from __future__ import annotations

from typing import Any

from pyramid.request import Request
from pyramid.response import Response

from ntq import serialize
from ntq.records import TaskView
from ntq.web.api.auth import Caller


def json_response(data: Any, status: int = 200, **headers: str) -> Response:
    response = Response(status=status, body=serialize.dumps(data), content_type="application/json")
    response.headers.update(headers)
    return response


def task_links(request: Request, task_id: str) -> dict[str, str]:
    """The task's resources (routes ``task``, ``task_response``, ``task_attempts``), built
    from ``/tasks`` once per request: a batch answer lists up to 1,000 tasks."""
    base = _tasks_url(request)
    return {
        "self": f"{base}/{task_id}",
        "response": f"{base}/{task_id}/response",
        "attempts": f"{base}/{task_id}/attempts",
    }


def _tasks_url(request: Request) -> str:
    url: str | None = request.environ.get("ntq.tasks_url")
    if url is None:
        url = request.environ["ntq.tasks_url"] = request.route_url("tasks")
    return url


def link_header(links: dict[str, str]) -> str:
    """An RFC 8288 ``Link`` header for the task's resources."""
    return ", ".join(f'<{url}>; rel="{rel}"' for rel, url in links.items())


def task_json(request: Request, task: TaskView, caller: Caller | None = None) -> dict[str, Any]:
    """The task as JSON; ``caller`` is the task's application when already known (an
    enqueue learns it from its own statement), else the request's ``caller``."""
    data = serialize.task_dict(task)
    data["app"] = (caller or request.caller).name
    data["links"] = task_links(request, data["id"])
    return data


def task_response(
    request: Request,
    task: TaskView,
    status: int = 200,
    caller: Caller | None = None,
    **headers: str,
) -> Response:
    data = task_json(request, task, caller)
    return json_response(data, status, Link=link_header(data["links"]), **headers)
