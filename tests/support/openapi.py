"""Holding ntq's OpenAPI document to the code: the routes Pyramid knows, the request fields
the schemas accept, and every response an in-process test receives."""

from __future__ import annotations

from typing import Any

from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from pyramid.registry import Registry
from webob import Request as WebobRequest
from webtest import TestApp
from webtest.response import TestResponse
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as WerkzeugRequest
from werkzeug.wrappers import Response as WerkzeugResponse

Operation = tuple[str, str]  # (METHOD, path template)
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CHECKED_BASE = "http://localhost"


def routed(registry: Registry) -> set[Operation]:
    """Every (method, path) a view answers, from Pyramid's introspection registry. A view
    without a method predicate answers every method. (HEAD comes with GET.)"""
    introspector = registry.introspector
    found: set[Operation] = set()
    for route in introspector.get_category("routes"):
        pattern = route["introspectable"]["pattern"]
        path = pattern if pattern.startswith("/") else "/" + pattern
        for view in introspector.related(route["introspectable"]):
            if view.category_name != "views":
                continue
            declared = view["request_methods"] or HTTP_METHODS
            methods = [declared] if isinstance(declared, str) else declared
            found.update((method, path) for method in methods if method != "HEAD")
    return found


def documented(document: dict[str, Any]) -> set[Operation]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in HTTP_METHODS
    }


def route_drift(registry: Registry, document: dict[str, Any]) -> dict[str, set[Operation]]:
    """Routes with no operation in the document, and operations with no route."""
    routes, described = routed(registry), documented(document)
    return {"undocumented": routes - described, "unrouted": described - routes}


def field_drift(accepted: frozenset[str], described: dict[str, Any]) -> dict[str, set[str]]:
    """Fields the code accepts but the document does not describe, and the reverse."""
    return {
        "undocumented": set(accepted) - set(described),
        "unaccepted": set(described) - set(accepted),
    }


def query_parameters(operation: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}


def as_werkzeug(request: WebobRequest) -> WerkzeugOpenAPIRequest:
    """The request as openapi-core reads it (taken before the app consumes the body), on
    one base URL whatever host the test presented: the document describes paths."""
    environ = EnvironBuilder(
        method=request.method,
        base_url=CHECKED_BASE,
        path=request.path_info,
        query_string=request.query_string,
        headers=[(name, value) for name, value in request.headers.items() if name != "Host"],
        data=request.body,
    ).get_environ()
    return WerkzeugOpenAPIRequest(WerkzeugRequest(environ))


def checked(spec: OpenAPI, sent: WerkzeugOpenAPIRequest, response: TestResponse) -> None:
    """Raise unless ``response`` (to ``sent``) is one the document describes."""
    received = WerkzeugResponse(
        response.body, status=response.status_code, headers=list(response.headerlist)
    )
    spec.validate_response(sent, WerkzeugOpenAPIResponse(received))


class CheckedApp(TestApp):  # type: ignore[misc]  # webtest is untyped
    """A WebTest app that holds every response to the OpenAPI document and counts the
    (METHOD, path, status) it saw."""

    def __init__(self, app: Any, document: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.spec = OpenAPI.from_dict({**document, "servers": [{"url": CHECKED_BASE}]})
        self.seen: set[tuple[str, str, int]] = set()

    def do_request(
        self, req: WebobRequest, status: Any = None, expect_errors: Any = None
    ) -> TestResponse:
        sent = as_werkzeug(req)
        response = super().do_request(req, status=status, expect_errors=expect_errors)
        try:
            checked(self.spec, sent, response)
        except (PathNotFound, OperationNotFound):
            # No document can describe a route that does not exist; its answer must say so.
            assert response.status_code in (404, 405), (req.method, req.path_info)
        self.seen.add((req.method, req.path_info, response.status_code))
        return response
