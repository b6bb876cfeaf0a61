"""Bad input is refused with the right 4xx and a JSON error, and stores nothing (SPEC §3,
§5); every accepted way of presenting an API key works, and nothing else does.

One web process serves the whole module (no worker: tasks stay where they are stored),
with a small NTQ_MAX_BODY_BYTES so the 413 needs no megabytes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, text

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.procs import Stack

BODY_LIMIT = 4096
HOOK = "https://example.com/hook"


@dataclass(frozen=True)
class Service:
    url: str
    mine: Credentials
    other: Credentials
    engine: Engine

    def count(self) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(text("SELECT count(*) FROM tasks")).scalar_one())

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.mine.api_key}"}

    def post(self, path: str = "/", key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {**self.headers(key), **kwargs.pop("headers", {})}
        return requests.post(self.url + path, headers=headers, timeout=10, **kwargs)

    def call(self, method: str, path: str, key: str | None = None,
             **kwargs: Any) -> requests.Response:
        headers = {**self.headers(key), **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10,
                                **kwargs)


stack = module_stack(worker=False, NTQ_MAX_BODY_BYTES=str(BODY_LIMIT))


@pytest.fixture(scope="module")
def service(stack: Stack, engine: Engine) -> Service:
    with engine.begin() as conn:
        mine = apps.create(conn, "validation-app")
        other = apps.create(conn, "someone-else")
    return Service(stack.url, mine, other, engine)


def assert_error(response: requests.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json()["error"]
    assert isinstance(error["code"], str), error
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    return error


def assert_refused(service: Service, response: requests.Response,
                   status: int | tuple[int, ...], before: int) -> dict[str, Any]:
    error = assert_error(response, status)
    assert service.count() == before, "a refused request stored a task"
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
def test_bad_enqueue_parameters_are_400_and_store_nothing(service: Service,
                                                          params: dict[str, str]) -> None:
    before = service.count()
    response = service.post("/", params=params, data=b"body")
    assert_refused(service, response, 400, before)


def test_overlong_idempotency_key_is_400(service: Service) -> None:
    before = service.count()
    response = service.post("/", params={"url": HOOK},
                            headers={"Idempotency-Key": "k" * 300})
    assert_refused(service, response, 400, before)


def test_body_over_the_limit_is_413_and_stores_nothing(service: Service) -> None:
    before = service.count()
    response = service.post("/", params={"url": HOOK}, data=b"x" * (BODY_LIMIT + 1),
                            headers={"Content-Type": "application/octet-stream"})
    assert_refused(service, response, 413, before)


def test_chunked_body_over_the_limit_is_413_and_stores_nothing(service: Service) -> None:
    """No Content-Length to trust: the limit holds while reading."""
    before = service.count()
    chunks = (b"x" * 1024 for _ in range(BODY_LIMIT // 1024 + 2))
    response = service.post("/", params={"url": HOOK}, data=chunks,
                            headers={"Content-Type": "application/octet-stream"})
    assert_refused(service, response, 413, before)


def test_body_at_the_limit_is_accepted(service: Service) -> None:
    before = service.count()
    response = service.post("/", params={"url": HOOK}, data=b"x" * BODY_LIMIT,
                            headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    assert response.json()["body_size"] == BODY_LIMIT
    assert service.count() == before + 1


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
def test_bad_structured_tasks_are_400_and_store_nothing(service: Service,
                                                        document: Any) -> None:
    before = service.count()
    response = service.post("/tasks", json=document)
    assert_refused(service, response, 400, before)


def test_malformed_json_is_400(service: Service) -> None:
    before = service.count()
    response = service.post("/tasks", data=b'{"url": ',
                            headers={"Content-Type": "application/json"})
    assert_refused(service, response, 400, before)


def test_structured_tasks_in_another_content_type_are_refused(service: Service) -> None:
    before = service.count()
    response = service.post("/tasks", data=b'{"url": "https://example.com/"}',
                            headers={"Content-Type": "text/plain"})
    assert_refused(service, response, (400, 415), before)


def test_a_batch_over_1000_is_refused_whole(service: Service) -> None:
    before = service.count()
    response = service.post("/tasks", json=[{"url": HOOK}] * 1001)
    assert_refused(service, response, (400, 413), before)


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
        service: Service, headers: dict[str, str]) -> None:
    before = service.count()
    response = requests.post(service.url + "/", params={"url": HOOK}, headers=headers,
                             timeout=10)
    assert_refused(service, response, 401, before)
    for path in ("/tasks", f"/tasks/{uuid.uuid4()}", "/stats"):
        assert_error(requests.get(service.url + path, headers=headers, timeout=10), 401)


@pytest.mark.parametrize("header", ["Authorization", "NTQ-API-Key", "NTORQUE-API-KEY",
                                    "NTORQUE_API_KEY"])
def test_every_documented_key_header_authenticates(service: Service, header: str) -> None:
    """nTorque's client sends NTORQUE_API_KEY with an underscore, which servers often drop."""
    key = service.mine.api_key
    value = f"Bearer {key}" if header == "Authorization" else key
    before = service.count()
    response = requests.post(service.url + "/", params={"url": HOOK}, headers={header: value},
                             timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["app"] == service.mine.name
    assert service.count() == before + 1
    task_url = response.headers["Location"]
    assert requests.get(task_url, headers={header: value}, timeout=10).status_code == 200


def test_only_health_readiness_and_metrics_are_open(service: Service) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(service.url + path, timeout=10).status_code == 200, path
    # SPEC §3: every other route requires a key, the service descriptor included.
    assert_error(requests.get(service.url + "/", timeout=10), 401)


def test_another_applications_task_is_404(service: Service) -> None:
    created = service.post("/", key=service.other.api_key, params={"url": HOOK})
    assert created.status_code == 201, created.text
    theirs = created.json()["id"]
    for method, path in [("GET", f"/tasks/{theirs}"), ("DELETE", f"/tasks/{theirs}"),
                         ("GET", f"/tasks/{theirs}/attempts"),
                         ("GET", f"/tasks/{theirs}/response"),
                         ("POST", f"/tasks/{theirs}/push"),
                         ("POST", f"/tasks/{theirs}/retry")]:
        assert_error(service.call(method, path), 404)
    still = service.call("GET", f"/tasks/{theirs}", key=service.other.api_key)
    assert still.json()["status"] == "PENDING"
    listed = service.call("GET", "/tasks").json()
    assert theirs not in {task["id"] for task in listed["tasks"]}


@pytest.mark.parametrize("path", [f"/tasks/{uuid.uuid4()}", "/tasks/not-a-uuid",
                                  "/tasks/%00", f"/tasks/{uuid.uuid4()}/attempts"])
def test_unknown_tasks_are_404(service: Service, path: str) -> None:
    assert_error(service.call("GET", path), 404)


@pytest.mark.parametrize("path", ["/nope", "/tasks/a/b/c", "/index.html"])
def test_unknown_routes_are_404_json(service: Service, path: str) -> None:
    assert_error(service.call("GET", path), 404)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/", "DELETE, GET, POST"), ("PATCH", "/", "DELETE, GET, POST"),
    ("PUT", f"/tasks/{uuid.uuid4()}", "DELETE, GET"),
    ("DELETE", "/tasks", "GET, POST"), ("POST", "/stats", "GET"),
])
def test_wrong_method_on_a_known_route_is_405_json(service: Service, method: str,
                                                   path: str, allow: str) -> None:
    before = service.count()
    response = service.call(method, path)
    assert_refused(service, response, 405, before)
    assert response.headers["Allow"] == allow


def test_idempotency_key_returns_the_existing_task(service: Service) -> None:
    before = service.count()
    headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = service.post("/", params={"url": HOOK}, headers=headers, data=b"a")
    again = service.post("/", params={"url": HOOK}, headers=headers, data=b"b")
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json()["id"] == first.json()["id"]
    assert service.count() == before + 1
