"""Bad input is refused with the right 4xx and a JSON error, and stores nothing (SPEC §3,
§5); every accepted way of presenting an API key works, and nothing else does.

The app runs with a small ``max_body_bytes`` so the 413 needs no megabytes. What only the
web server decides (chunked framing, header names with underscores) stays in
``tests/acceptance/test_validation.py``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from webtest import TestApp, TestResponse

from ntq.config import Settings
from ntq.store.apps import Credentials
from tests.integration.api.conftest import Client, count_rows
from tests.support.web import assert_error, call, query

BODY_LIMIT = 4096
HOOK = "https://example.com/hook"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, max_body_bytes=BODY_LIMIT)


def assert_refused(
    engine: Engine, response: TestResponse, status: int | tuple[int, ...], before: int
) -> dict[str, Any]:
    error = assert_error(response, status)
    assert count_rows(engine) == before, "a refused request stored a task"
    return error


BAD_QUERIES = {
    "missing url": {},
    "empty url": {"url": ""},
    "no scheme": {"url": "example.com/hook"},
    "ftp scheme": {"url": "ftp://example.com/hook"},
    "javascript scheme": {"url": "javascript:alert(1)"},
    "file scheme": {"url": "file:///etc/passwd"},
    "no host": {"url": "http:///hook"},
    "bare scheme": {"url": "https://"},
    "too long": {"url": "https://example.com/" + "a" * 2100},
    "space in path": {"url": "https://example.com/a b"},
    "space in host": {"url": "https://exa mple.com/"},
    "line break": {"url": "https://example.com/\r\nX-Injected: 1"},
    "port out of range": {"url": "https://example.com:99999/"},
    "port zero": {"url": "https://example.com:0/"},
    "broken ipv6 host": {"url": "http://[::1/"},
    "method TRACE": {"url": HOOK, "method": "TRACE"},
    "method CONNECT": {"url": HOOK, "method": "CONNECT"},
    "method FOO": {"url": HOOK, "method": "FOO"},
    "timeout 0": {"url": HOOK, "timeout": "0"},
    "timeout negative": {"url": HOOK, "timeout": "-5"},
    "timeout above max": {"url": HOOK, "timeout": "3601"},
    "timeout huge": {"url": HOOK, "timeout": "1" + "0" * 30},
    "timeout words": {"url": HOOK, "timeout": "sixty"},
    "timeout fraction": {"url": HOOK, "timeout": "1.5"},
    "timeout nan": {"url": HOOK, "timeout": "nan"},
    "timeout empty": {"url": HOOK, "timeout": ""},
    "delay negative": {"url": HOOK, "delay": "-1"},
    "delay words": {"url": HOOK, "delay": "soon"},
    "delay nan": {"url": HOOK, "delay": "nan"},
    "delay infinite": {"url": HOOK, "delay": "inf"},
    "delay overflow": {"url": HOOK, "delay": "1e400"},
    "delay beyond a year": {"url": HOOK, "delay": str(400 * 86400)},
    "not_before garbage": {"url": HOOK, "not_before": "next tuesday"},
    "delay and not_before": {"url": HOOK, "delay": "5", "not_before": "2030-01-01T00:00:00Z"},
    "max_retries negative": {"url": HOOK, "max_retries": "-1"},
    "max_retries words": {"url": HOOK, "max_retries": "many"},
    "max_retries huge": {"url": HOOK, "max_retries": "1000000000"},
    "backoff unknown": {"url": HOOK, "backoff": "fibonacci"},
    "callback ftp": {"url": HOOK, "callback": "ftp://example.com/done"},
    "callback no host": {"url": HOOK, "callback": "http://"},
}


@pytest.mark.parametrize("params", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_enqueue_parameters_are_400_and_store_nothing(
    api: TestApp, engine: Engine, params: dict[str, str]
) -> None:
    before = count_rows(engine)
    response = api.post(query("/", **params), b"body", expect_errors=True)
    assert_refused(engine, response, 400, before)


def test_overlong_idempotency_key_is_400(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    response = api.post(
        query("/", url=HOOK), headers={"Idempotency-Key": "k" * 300}, expect_errors=True
    )
    assert_refused(engine, response, 400, before)


def post_body(api: TestApp, body: bytes) -> TestResponse:
    return api.post(
        query("/", url=HOOK),
        body,
        expect_errors=True,
        headers={"Content-Type": "application/octet-stream"},
    )


def test_body_over_the_limit_is_413_and_stores_nothing(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    assert_refused(engine, post_body(api, b"x" * (BODY_LIMIT + 1)), 413, before)


def test_body_at_the_limit_is_accepted(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    response = post_body(api, b"x" * BODY_LIMIT)
    assert response.status_int == 201, response.text
    assert response.json["body_size"] == BODY_LIMIT
    assert count_rows(engine) == before + 1


BAD_JSON = {
    "bad url": {"url": "ftp://example.com/"},
    "unknown field": {"url": HOOK, "priority": "high"},
    "timeout as text": {"url": HOOK, "timeout": "abc"},
    "timeout as bool": {"url": HOOK, "timeout": True},
    "two bodies": {"url": HOOK, "body": "a", "json": {"b": 1}},
    "bad base64": {"url": HOOK, "body_base64": "***"},
    "headers not an object": {"url": HOOK, "headers": ["X-A: 1"]},
    "header with line break": {"url": HOOK, "headers": {"X-A": "1\r\nX-B: 2"}},
    "not an object": "https://example.com/hook",
    "empty array": [],
    "one bad item spoils the batch": [{"url": HOOK}, {"url": HOOK}, {"url": "nope"}],
}


@pytest.mark.parametrize("document", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_structured_tasks_are_400_and_store_nothing(
    api: TestApp, engine: Engine, document: Any
) -> None:
    before = count_rows(engine)
    response = api.post_json("/tasks", document, expect_errors=True)
    assert_refused(engine, response, 400, before)


def test_malformed_json_is_400(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    response = api.post("/tasks", b'{"url": ', content_type="application/json", expect_errors=True)
    assert_refused(engine, response, 400, before)


def test_structured_tasks_in_another_content_type_are_refused(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    response = api.post(
        "/tasks", b'{"url": "https://example.com/"}', content_type="text/plain", expect_errors=True
    )
    assert_refused(engine, response, (400, 415), before)


def test_a_batch_over_1000_is_refused_whole(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    response = api.post_json("/tasks", [{"url": HOOK}] * 1001, expect_errors=True)
    assert_refused(engine, response, (400, 413), before)


BAD_KEYS = {
    "no key": {},
    "unknown key": {"Authorization": "Bearer ntq_" + "A" * 43},
    "any 40 characters": {"Authorization": "Bearer " + "a" * 40},
    "empty bearer": {"Authorization": "Bearer "},
    "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
    "huge key": {"NTQ-API-Key": "ntq_" + "x" * 5000},
    "unknown NTQ-API-Key": {"NTQ-API-Key": "ntq_" + uuid.uuid4().hex},
    "unknown NTORQUE_API_KEY": {"NTORQUE_API_KEY": "a" * 40},
}


@pytest.mark.parametrize("headers", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_missing_wrong_or_malformed_keys_are_401_and_store_nothing(
    web: TestApp, engine: Engine, creds: Credentials, headers: dict[str, str]
) -> None:
    before = count_rows(engine)
    response = web.post(query("/", url=HOOK), headers=headers, expect_errors=True)
    assert_refused(engine, response, 401, before)
    for path in ("/tasks", f"/tasks/{uuid.uuid4()}", "/stats"):
        assert_error(web.get(path, headers=headers, expect_errors=True), 401)


@pytest.mark.parametrize("header", ["Authorization", "NTQ-API-Key", "NTORQUE-API-KEY"])
def test_every_documented_key_header_authenticates(
    web: TestApp, engine: Engine, creds: Credentials, header: str
) -> None:
    value = f"Bearer {creds.api_key}" if header == "Authorization" else creds.api_key
    before = count_rows(engine)
    response = web.post(query("/", url=HOOK), headers={header: value})
    assert response.status_int == 201, response.text
    assert response.json["app"] == creds.name
    assert count_rows(engine) == before + 1
    assert web.get(response.headers["Location"], headers={header: value}).status_int == 200


def test_only_health_readiness_and_metrics_are_open(web: TestApp) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert web.get(path).status_int == 200, path
    # SPEC §3: every other route requires a key, the service descriptor included.
    assert_error(web.get("/", expect_errors=True), 401)


def test_another_applications_task_is_404(
    api: TestApp, client: Client, new_app: Callable[[str], Credentials]
) -> None:
    other = client(new_app("someone-else").api_key)
    created = other.post(query("/", url=HOOK))
    assert created.status_int == 201, created.text
    theirs = created.json["id"]
    for method, path in [
        ("GET", f"/tasks/{theirs}"),
        ("DELETE", f"/tasks/{theirs}"),
        ("GET", f"/tasks/{theirs}/attempts"),
        ("GET", f"/tasks/{theirs}/response"),
        ("POST", f"/tasks/{theirs}/push"),
        ("POST", f"/tasks/{theirs}/retry"),
    ]:
        assert_error(call(api, method, path), 404)
    assert other.get(f"/tasks/{theirs}").json["status"] == "PENDING"
    listed = api.get("/tasks").json
    assert theirs not in {task["id"] for task in listed["tasks"]}


@pytest.mark.parametrize(
    "path",
    [
        f"/tasks/{uuid.uuid4()}",
        "/tasks/not-a-uuid",
        "/tasks/%00",
        f"/tasks/{uuid.uuid4()}/attempts",
    ],
)
def test_unknown_tasks_are_404(api: TestApp, path: str) -> None:
    assert_error(call(api, "GET", path), 404)


@pytest.mark.parametrize("path", ["/nope", "/tasks/a/b/c", "/index.html"])
def test_unknown_routes_are_404_json(api: TestApp, path: str) -> None:
    assert_error(call(api, "GET", path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/", "DELETE, GET, POST"),
        ("PATCH", "/", "DELETE, GET, POST"),
        ("PUT", f"/tasks/{uuid.uuid4()}", "DELETE, GET"),
        ("DELETE", "/tasks", "GET, POST"),
        ("POST", "/stats", "GET"),
    ],
)
def test_wrong_method_on_a_known_route_is_405_json(
    api: TestApp, engine: Engine, method: str, path: str, allow: str
) -> None:
    before = count_rows(engine)
    response = call(api, method, path)
    assert_refused(engine, response, 405, before)
    assert response.headers["Allow"] == allow


def test_idempotency_key_returns_the_existing_task(api: TestApp, engine: Engine) -> None:
    before = count_rows(engine)
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = api.post(query("/", url=HOOK), b"a", headers=headers)
    again = api.post(query("/", url=HOOK), b"b", headers=headers)
    assert first.status_int == 201, first.text
    assert again.status_int == 200, again.text
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json["id"] == first.json["id"]
    assert count_rows(engine) == before + 1
