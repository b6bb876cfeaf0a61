"""Helpers for the in-process API tests (``tests/integration/api``): WebTest requests as
the acceptance tests' ``requests`` calls made them, and the checks they share."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from webtest import TestApp, TestResponse


def query(path: str, **params: Any) -> str:
    """``path`` with ``params`` as its query string."""
    return f"{path}?{urlencode(params)}" if params else path


def call(client: TestApp, method: str, path: str, **kwargs: Any) -> TestResponse:
    """Any method on ``path``, whatever the status."""
    return client.request(path, method=method, expect_errors=True, **kwargs)


def enqueue(
    client: TestApp,
    url: str,
    body: bytes = b"payload",
    headers: dict[str, str] | None = None,
    **params: Any,
) -> TestResponse:
    """``POST /`` in the pass-through form (``text/plain``), whatever the status."""
    sent = {"Content-Type": "text/plain", **(headers or {})}
    return client.post(query("/", url=url, **params), body, headers=sent, expect_errors=True)


def enqueued(client: TestApp, url: str, body: bytes = b"payload", **params: Any) -> str:
    """The id of a task enqueued through ``POST /`` (asserting the 201)."""
    response = enqueue(client, url, body, **params)
    assert response.status_int == 201, response.text
    task_id: str = response.json["id"]
    return task_id


def assert_error(
    response: TestResponse, status: int | tuple[int, ...], code: str | None = None
) -> dict[str, Any]:
    """A JSON ``{"error": {"code", "message"}}`` answer with ``status`` (or one of them)."""
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_int in allowed, (response.status, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json["error"]
    assert isinstance(error["code"], str), error
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    if code:
        assert error["code"] == code, error
    return error
