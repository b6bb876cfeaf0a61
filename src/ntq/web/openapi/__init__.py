"""The API's OpenAPI document at ``GET /openapi.json`` and a reference page made from it at
``GET /docs``; both open to anyone.

The document is built once, from the running settings (its limits and defaults); each
answer names the server the client reached.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq.config import Settings
from ntq.web.api.render import json_response
from ntq.web.openapi import document, reference
from ntq.web.services import services


@cache
def built(settings: Settings) -> dict[str, Any]:
    """The document for ``settings``, built once."""
    return document.build(settings)


@cache
def page(settings: Settings) -> bytes:
    """The reference page for ``settings``, rendered once."""
    return reference.render(built(settings)).encode()


def served(request: Request) -> dict[str, Any]:
    """The document, with this server's URL."""
    return {**built(services(request).settings), "servers": [{"url": request.application_url}]}


@view_config(route_name="openapi", request_method="GET")
def openapi_json(request: Request) -> Response:
    return json_response(served(request))


@view_config(route_name="reference", request_method="GET")
def reference_page(request: Request) -> Response:
    return Response(
        body=page(services(request).settings), content_type="text/html", charset="utf-8"
    )


def includeme(config: Configurator) -> None:
    config.add_route("openapi", "/openapi.json")
    config.add_route("reference", "/docs")
    config.scan("ntq.web.openapi")
