"""The HTTP API: routes, views, request schemas, JSON errors.

``includeme`` declares every route; views live in :mod:`ntq.web.api.views`.
"""

from __future__ import annotations

from pyramid.config import Configurator

from ntq.web.api.auth import caller


def includeme(config: Configurator) -> None:
    config.add_request_method(caller, "caller", reify=True)
    config.add_route("root", "/")
    config.add_route("tasks", "/tasks")
    config.add_route("task", "/tasks/{id}")
    config.add_route("task_response", "/tasks/{id}/response")
    config.add_route("task_attempts", "/tasks/{id}/attempts")
    config.add_route("task_retry", "/tasks/{id}/retry")
    config.add_route("task_push", "/tasks/{id}/push")
    config.add_route("stats", "/stats")
    config.add_route("healthz", "/healthz")
    config.add_route("readyz", "/readyz")
    config.add_route("metrics", "/metrics")
    config.scan("ntq.web.api")
