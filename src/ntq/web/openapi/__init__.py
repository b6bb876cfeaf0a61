"""The API's OpenAPI document at ``GET /openapi.json`` and a reference page made from it at
``GET /docs``; both open to anyone.

The document is built once, from the running settings (its limits and defaults); each
answer names the server the client reached.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq.web.api.render import json_response
from ntq.web.openapi import document, reference


def served(request: Request) -> dict[str, Any]:
    """The document, with this server's URL."""
    built: dict[str, Any] = request.registry.ntq_openapi
    return {**built, "servers": [{"url": request.application_url}]}


@view_config(route_name="openapi", request_method="GET")
def openapi_json(request: Request) -> Response:
    return json_response(served(request))


@view_config(route_name="reference", request_method="GET")
def reference_page(request: Request) -> Response:
    return Response(body=request.registry.ntq_reference, content_type="text/html",
                    charset="utf-8")


def includeme(config: Configurator) -> None:
    built = document.build(config.registry.ntq_settings)
    config.registry.ntq_openapi = built
    config.registry.ntq_reference = reference.render(built).encode()
    config.add_route("openapi", "/openapi.json")
    config.add_route("reference", "/docs")
    config.scan("ntq.web.openapi")
