"""HSTS only when enabled; ``X-Forwarded-Proto: https`` makes ``Location`` and links https
(SPEC §5, issue 4 item 5). That nothing secret reaches the logs of a real run is in
``tests/acceptance/test_secrecy.py``."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from webtest import TestApp, TestResponse

from ntq.config import Settings
from tests.integration.api.conftest import HOST
from tests.support.web import call, enqueue, query


@pytest.fixture
def api_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """HSTS off, unless a test passes ``True`` (indirect parametrization)."""
    return dataclasses.replace(settings, enable_hsts=getattr(request, "param", False))


def sample_responses(api: TestApp, web: TestApp) -> dict[str, TestResponse]:
    """A spread of responses: success, errors, unauthenticated."""
    created = enqueue(api, "http://example.com/hook", b"x", delay=3600)
    task_id = created.json["id"]
    return {
        "enqueue": created,
        "task": api.get(f"/tasks/{task_id}"),
        "descriptor": api.get("/"),
        "list": api.get("/tasks"),
        "not found": call(api, "GET", f"/tasks/{uuid.uuid4()}"),
        "bad request": enqueue(api, "javascript:alert(1)"),
        "unauthorized": call(web, "GET", "/tasks"),
        "health": web.get("/healthz"),
    }


def test_no_hsts_by_default(api: TestApp, web: TestApp) -> None:
    for name, response in sample_responses(api, web).items():
        assert "Strict-Transport-Security" not in response.headers, name


@pytest.mark.parametrize("api_settings", [True], indirect=True, ids=["hsts"])
def test_hsts_on_every_response_when_enabled(api: TestApp, web: TestApp) -> None:
    for name, response in sample_responses(api, web).items():
        hsts = response.headers.get("Strict-Transport-Security", "")
        assert "max-age=" in hsts, (name, response.status, response.headers)
        assert int(hsts.split("max-age=")[1].split(";")[0]) >= 86400, hsts


def links_of(response: TestResponse) -> list[str]:
    """Every absolute URL in the Location and Link headers and the JSON body."""
    found = []
    if "Location" in response.headers:
        found.append(response.headers["Location"])
    for part in response.headers.get("Link", "").split(","):
        if "<" in part:
            found.append(part.split("<", 1)[1].split(">", 1)[0])

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith(("http://127.", "https://127.")):
            found.append(value)

    walk(response.json)
    return found


def test_forwarded_proto_https_makes_location_and_links_https(api: TestApp) -> None:
    https = {"X-Forwarded-Proto": "https"}
    created = enqueue(api, "http://example.com/hook", b"x", headers=https, delay=3600)
    assert created.status_int == 201
    task_id = created.json["id"]
    enqueue(api, "http://example.com/hook", b"y", delay=3600)
    assert created.headers["Location"] == f"https://{HOST}/tasks/{task_id}"
    responses = {
        "enqueue": created,
        "task": api.get(f"/tasks/{task_id}", headers=https),
        "descriptor": api.get("/", headers=https),
        "list with next page": api.get(query("/tasks", limit="1"), headers=https),
        "attempts": api.get(f"/tasks/{task_id}/attempts", headers=https),
        "push": api.post(f"/tasks/{task_id}/push", headers=https),
        "structured": api.post_json(
            "/tasks", {"url": "http://example.com/z", "delay": 3600}, headers=https
        ),
    }
    for name, response in responses.items():
        urls = links_of(response)
        assert urls, name
        assert all(u.startswith(f"https://{HOST}/") for u in urls), (name, urls)
    assert responses["list with next page"].json["next"].startswith("https://")

    # Without the header (or with a value that is not a scheme) links stay http.
    for headers in ({}, {"X-Forwarded-Proto": "javascript"}, {"X-Forwarded-Proto": "ftp"}):
        plain = api.get(f"/tasks/{task_id}", headers=headers)
        urls = links_of(plain)
        assert urls
        assert all(u.startswith(f"http://{HOST}/") for u in urls), (headers, urls)
