"""JSON out: tasks with links, timestamps in UTC ISO 8601 with ``Z``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from pyramid.request import Request
from pyramid.response import Response

from ntq.records import TaskView

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def json_response(data: Any, status: int = 200, **headers: str) -> Response:
    response = Response(status=status, body=orjson.dumps(data, option=JSON_OPTIONS),
                        content_type="application/json")
    response.headers.update(headers)
    return response


def task_links(request: Request, task_id: str) -> dict[str, str]:
    return {
        "self": request.route_url("task", id=task_id),
        "response": request.route_url("task_response", id=task_id),
        "attempts": request.route_url("task_attempts", id=task_id),
    }


def link_header(links: dict[str, str]) -> str:
    """An RFC 8288 ``Link`` header for the task's resources."""
    return ", ".join(f'<{url}>; rel="{rel}"' for rel, url in links.items())


def task_json(request: Request, task: TaskView) -> dict[str, Any]:
    data = asdict(task)
    app_id = data.pop("app_id")
    data["id"] = str(task.id)
    data["app"] = request.caller.name if app_id is not None else None
    data["attempts"] = task.retry_count
    data["links"] = task_links(request, data["id"])
    return data


def task_response(request: Request, task: TaskView, status: int = 200,
                  **headers: str) -> Response:
    data = task_json(request, task)
    return json_response(data, status, Link=link_header(data["links"]), **headers)
