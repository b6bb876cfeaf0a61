"""The OpenAPI document is the truth: it validates, names every route Pyramid knows and
every field the request schemas accept, and every response of the in-process API (WebTest,
real PostgreSQL and Redis) conforms to it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from openapi_core.validation.response.exceptions import InvalidData
from openapi_spec_validator import validate
from pyramid.config import Configurator
from pyramid.response import Response
from webtest import TestApp

from ntq.config import Settings
from ntq.records import AttemptResult, Outcome, Verdict
from ntq.store import transitions
from ntq.store.apps import Credentials
from ntq.store.db import Store
from ntq.web.api import auth, schemas
from ntq.web.app import make_app
from ntq.web.services import of
from tests.support.openapi import (
    CheckedApp,
    documented,
    field_drift,
    query_parameters,
    route_drift,
)

HOOK = "https://example.com/hook"


@pytest.fixture
def wsgi(settings: Settings) -> Iterator[Any]:
    app = make_app(settings, pool_size=2)
    yield app
    of(app.registry).close()  # now, while the test database exists


@pytest.fixture
def document(wsgi: Any) -> dict[str, Any]:
    served: dict[str, Any] = TestApp(wsgi).get("/openapi.json").json
    return served


@pytest.fixture
def web(wsgi: Any, document: dict[str, Any], creds: Credentials) -> CheckedApp:
    """The app, as the test application, every response checked against the document."""
    return CheckedApp(
        wsgi, document, extra_environ={"HTTP_AUTHORIZATION": f"Bearer {creds.api_key}"}
    )


def test_the_document_is_served_without_a_key_and_validates(wsgi: Any) -> None:
    response = TestApp(wsgi).get("/openapi.json", extra_environ={"HTTP_HOST": "q.example"})
    document = response.json
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": "http://q.example"}]


def test_every_route_is_documented_and_every_operation_routed(
    wsgi: Any, document: dict[str, Any]
) -> None:
    assert route_drift(wsgi.registry, document) == {"undocumented": set(), "unrouted": set()}


def test_a_route_added_without_documenting_it_is_caught(
    settings: Settings, document: dict[str, Any]
) -> None:
    config = Configurator()
    config.include("ntq.web.api")
    config.include("ntq.web.openapi")
    config.add_route("undocumented", "/tasks/{id}/priority")
    config.add_view(lambda request: Response(), route_name="undocumented", request_method="PUT")
    config.commit()
    drift = route_drift(config.registry, document)
    assert drift == {"undocumented": {("PUT", "/tasks/{id}/priority")}, "unrouted": set()}


def test_every_request_field_is_documented(document: dict[str, Any]) -> None:
    fields = document["components"]["schemas"]["TaskRequest"]["properties"]
    assert field_drift(schemas.JSON_FIELDS, fields) == {"undocumented": set(), "unaccepted": set()}
    parameters = query_parameters(document["paths"]["/"]["post"])
    assert field_drift(schemas.QUERY_PARAMETERS, parameters) == {
        "undocumented": set(),
        "unaccepted": set(),
    }


def test_a_request_field_added_without_documenting_it_is_caught(document: dict[str, Any]) -> None:
    fields = document["components"]["schemas"]["TaskRequest"]["properties"]
    drift = field_drift(schemas.JSON_FIELDS | {"priority"}, fields)
    assert drift == {"undocumented": {"priority"}, "unaccepted": set()}


def test_every_accepted_key_header_is_a_security_scheme(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    headers = {s["name"] for s in schemes.values() if s["type"] == "apiKey"}
    assert {*auth.KEY_HEADERS, "NTORQUE_API_KEY"} == headers
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <key>",
    }
    assert [next(iter(s)) for s in document["security"]] == list(schemes)


def test_a_response_field_added_without_documenting_it_is_caught(
    wsgi: Any, document: dict[str, Any], creds: Credentials
) -> None:
    def with_extra_field(environ: dict[str, Any], start_response: Any) -> Any:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], *args: Any) -> None:
            captured.update(status=status, headers=headers)

        body = b"".join(wsgi(environ, capture))
        if body.startswith(b"{") and b'"status"' in body:
            data = json.loads(body)
            body = json.dumps({**data, "priority": 1}).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], [*headers, ("Content-Length", str(len(body)))])
        return [body]

    web = CheckedApp(
        with_extra_field, document, extra_environ={"HTTP_AUTHORIZATION": f"Bearer {creds.api_key}"}
    )
    with pytest.raises(InvalidData, match="priority"):
        web.post(f"/?url={HOOK}")  # the task answered, plus "priority"


def enqueue(web: CheckedApp, **params: Any) -> dict[str, Any]:
    response = web.post(
        f"/?url={HOOK}" + "".join(f"&{k}={v}" for k, v in params.items()),
        b"hello",
        headers={"Content-Type": "text/plain"},
        status=201,
    )
    assert response.headers["Location"].endswith(f"/tasks/{response.json['id']}")
    task: dict[str, Any] = response.json
    return task


def answer(store: Store, task_id: str) -> None:
    """What a worker would record: one attempt with a response."""
    [held] = transitions.acquire(store, [uuid.UUID(task_id)])
    transitions.finish(
        store,
        held,
        AttemptResult(
            method="POST",
            started=datetime.now(UTC),
            elapsed_ms=3,
            status_code=200,
            reason="OK",
            headers={"Content-Type": "text/plain"},
            body=b"\xff\x00",
        ),
        Verdict(Outcome.COMPLETE),
    )


def enqueue_responses_conform(web: CheckedApp) -> None:
    first = enqueue(web, delay=5, backoff="linear")
    again = web.post(f"/?url={HOOK}", headers={"Idempotency-Key": "k1"}, status=201)
    web.post(f"/?url={HOOK}", headers={"Idempotency-Key": "k1"}, status=200)
    assert again.headers["Link"]
    web.post_json("/tasks", {"url": HOOK, "json": {"a": 1}, "cancel_notice": "never"}, status=201)
    batch = web.post_json(
        "/tasks", [{"url": HOOK}, {"url": HOOK, "body_base64": "AA=="}], status=201
    )
    assert len(batch.json["tasks"]) == 2
    web.post_json("/tasks", [{"url": HOOK, "idempotency_key": "k1"}], status=200)
    web.post("/?url=ftp://x", status=400)
    web.post(f"/?url={HOOK}&colour=red", status=400)
    web.post_json("/tasks", [{"url": HOOK}, {"url": HOOK, "priority": 1}], status=400)
    web.post("/tasks", b"{}", headers={"Content-Type": "text/plain"}, status=415)
    web.post(f"/?url={HOOK}", b"x" * (of(web.app.registry).settings.max_body_bytes + 1), status=413)
    web.get(f"/tasks/{first['id']}", status=200)


def reading_and_managing_responses_conform(web: CheckedApp, store: Store) -> None:
    task = enqueue(web)
    path = f"/tasks/{task['id']}"
    web.get(path + "/response", status=404)
    answer(store, task["id"])
    response = web.get(path + "/response?wait=0.1", status=200)
    assert response.json["body_base64"] == "/wA="
    web.get(path + "/attempts", status=200)
    web.delete(path + "/response", status=204)
    assert web.get(path + "/response").json["body"] is None
    web.delete(path, status=409)
    web.post(path + "/push", status=201)
    web.get(path + "/response?wait=-1", status=400)
    web.get("/tasks/not-a-uuid", status=404)
    web.get("/tasks/01890000-0000-7000-8000-000000000000/attempts", status=404)


def cancel_replay_and_delete_all_conform(web: CheckedApp) -> None:
    task = enqueue(web)
    path = f"/tasks/{task['id']}"
    web.post(path + "/retry", status=409)
    web.delete(path, status=204)
    assert web.post(path + "/retry", status=200).json["status"] == "PENDING"
    web.delete("/", status=204)
    web.get(path, status=404)


def listing_and_service_routes_conform(web: CheckedApp) -> None:
    for _ in range(3):
        enqueue(web)
    page = web.get("/tasks?limit=2&status=pending", status=200)
    assert page.headers["Link"].endswith('rel="next"')
    web.get(page.json["next"], status=200)
    web.get("/tasks?created_after=2020-01-01T00:00:00Z&created_before=4102444800", status=400)
    web.get("/tasks?limit=0", status=400)
    for path in ("/", "/stats", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        web.get(path, status=200)
    web.get("/stats", headers={"Authorization": "Bearer ntq_wrong"}, status=401)


def test_every_response_conforms_and_every_operation_is_exercised(
    web: CheckedApp, store: Store, document: dict[str, Any]
) -> None:
    enqueue_responses_conform(web)
    reading_and_managing_responses_conform(web, store)
    cancel_replay_and_delete_all_conform(web)
    listing_and_service_routes_conform(web)
    exercised = {(method, _template(document, path)) for method, path, _ in web.seen}
    assert documented(document) - exercised == set()


def _template(document: dict[str, Any], path: str) -> str:
    """The document's path template that ``path`` matches."""
    parts = path.split("/")
    template: str
    for template in document["paths"]:
        pieces = template.split("/")
        if len(pieces) == len(parts) and all(
            a == b or a.startswith("{") for a, b in zip(pieces, parts, strict=True)
        ):
            return template
    return path


def test_the_reference_page_names_every_operation(
    web: CheckedApp, document: dict[str, Any]
) -> None:
    page = TestApp(web.app).get("/docs")
    assert page.content_type == "text/html"
    assert "<script" not in page.text
    assert "http" not in page.text.split("<body>")[0]
    for item in document["paths"].values():
        for method, operation in item.items():
            if method != "parameters":
                assert f'id="{operation["operationId"]}"' in page.text
