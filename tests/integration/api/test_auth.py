"""Who may do what (SPEC §3, §5; issue 4 items 1 and 4): API keys are random and stored
only as a digest; every route but health needs a valid key, presented in any documented
header; idempotency keys are per application. What needs the ``ntq`` command, a worker or
a keep-alive connection is in ``tests/acceptance/test_auth.py``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text
from webtest import TestApp

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.integration.api.conftest import Client, count_rows
from tests.support.web import assert_error, call, enqueue, enqueued


def stored_values(engine: Engine) -> list[str]:
    """Every value of every column of the key and application tables, as text."""
    out = []
    with engine.connect() as conn:
        for table in ("api_keys", "apps"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):  # noqa: S608
                out += [str(value) for value in row]
    return out


def test_keys_are_random_and_stored_only_as_a_digest(
    engine: Engine, creds: Credentials, new_app: Callable[[str], Credentials]
) -> None:
    made = [creds] + [new_app(f"app-{i}") for i in range(5)]
    with engine.begin() as conn:
        extra = [apps.add_key(conn, creds.app_id) for _ in range(4)]
    keys = [c.api_key for c in made] + extra
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert len(key) >= 40  # well over 128 random bits after the prefix
        assert key.startswith(apps.KEY_PREFIX)
    values = stored_values(engine)
    for key in keys:
        random_part = key.removeprefix(apps.KEY_PREFIX)
        assert not [v for v in values if key in v or random_part in v], key
    # Bearer-token leakage through a reversible encoding would be as bad as plain text.
    encoded = [base64.b64encode(k.encode()).decode() for k in keys]
    assert not [v for v in values for e in encoded if e in v]


def test_every_route_but_health_needs_a_valid_key(
    api: TestApp, web: TestApp, creds: Credentials, engine: Engine
) -> None:
    task_id = enqueued(api, "http://example.com/hook", delay=3600)
    task_routes = [
        ("GET", "/tasks/{id}"),
        ("GET", "/tasks/{id}/response"),
        ("GET", "/tasks/{id}/attempts"),
        ("DELETE", "/tasks/{id}"),
        ("POST", "/tasks/{id}/retry"),
        ("POST", "/tasks/{id}/push"),
        ("DELETE", "/tasks/{id}/response"),
    ]
    routes = [
        ("GET", "/"),
        ("POST", "/?url=http://example.com/"),
        ("DELETE", "/"),
        ("GET", "/tasks"),
        ("POST", "/tasks"),
        ("GET", "/stats"),
        *[(m, p.format(id=task_id)) for m, p in task_routes],
    ]
    wrong = [
        None,
        "",
        "ntq_" + "A" * 43,
        "x" * 40,
        creds.api_key + "x",
        creds.api_key[:-1],
        "ntq_' OR '1'='1",
        creds.signing_secret,
    ]
    body = json.dumps({"url": "http://example.com/"}).encode()
    for method, path in routes:
        for key in wrong:
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            response = call(
                web, method, path, headers=headers, body=body, content_type="application/json"
            )
            assert_error(response, 401, "unauthorized")
        response = call(web, method, path, headers={"Authorization": f"Basic {creds.api_key}"})
        assert_error(response, 401, "unauthorized")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert web.get(path).status_int == 200
    # The unauthenticated DELETEs did nothing.
    assert api.get(f"/tasks/{task_id}").json["status"] == "PENDING"
    assert count_rows(engine) == 1


KEY_HEADERS = [
    "Authorization",
    "authorization-lower",
    "NTQ-API-Key",
    "NTORQUE-API-KEY",
    "NTORQUE_API_KEY",
]


@pytest.mark.parametrize("header", KEY_HEADERS)
def test_every_documented_key_header_works(web: TestApp, creds: Credentials, header: str) -> None:
    """In process, ``NTORQUE_API_KEY`` reaches the app as the web server would pass it on;
    that gunicorn does is checked in ``tests/acceptance/test_validation.py``."""
    if header == "Authorization":
        headers = {"Authorization": f"Bearer {creds.api_key}"}
    elif header == "authorization-lower":
        headers = {"authorization": f"bearer {creds.api_key}"}
    else:
        headers = {header: creds.api_key}
    response = web.get("/tasks", headers=headers, expect_errors=True)
    assert response.status_int == 200, (header, response.text)
    headers = {k: v + "0" for k, v in headers.items()}
    assert_error(web.get("/tasks", headers=headers, expect_errors=True), 401)


def test_idempotency_keys_are_per_application(
    api: TestApp, client: Client, new_app: Callable[[str], Credentials]
) -> None:
    b = client(new_app("other-app").api_key)
    key = {"Idempotency-Key": "k-1"}
    first = enqueue(api, "http://example.com/a", b"mine", headers=key, delay=3600)
    assert first.status_int == 201
    theirs = enqueue(b, "http://example.com/b", b"theirs", headers=key, delay=3600)
    assert theirs.status_int == 201, theirs.text  # a new task, not A's
    assert theirs.json["id"] != first.json["id"]
    assert theirs.json["url"] == "http://example.com/b"
    structured = b.post_json(
        "/tasks", {"url": "http://example.com/c", "idempotency_key": "k-1", "delay": 3600}
    )
    assert structured.status_int == 200
    assert structured.json["id"] == theirs.json["id"]
    again = enqueue(api, "http://example.com/a", b"mine", headers=key, delay=3600)
    assert again.status_int == 200
    assert again.json["id"] == first.json["id"]
