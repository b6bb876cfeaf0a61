"""A request that can never be sent (issue 10 item 10) is refused at enqueue with a 400
naming the field, and stores nothing. What a worker does with such a task stored anyway
is in ``tests/acceptance/test_unsendable.py``."""

from __future__ import annotations

from typing import Any

import pytest
from webtest import TestApp, TestResponse

from tests.support.web import enqueue

HOOK = "https://example.com/hook"


def error_of(response: TestResponse) -> dict[str, str]:
    assert response.status_int == 400, response.text
    error: dict[str, str] = response.json["error"]
    return error


UNSENDABLE_JSON = {
    "header value outside Latin-1": ({"headers": {"X-Name": "日本"}}, "invalid_headers", "X-Name"),
    "header value with a control character": (
        {"headers": {"X-Name": "a\x01b"}},
        "invalid_headers",
        "X-Name",
    ),
    "header value with leading space": ({"headers": {"X-Name": " a"}}, "invalid_headers", "X-Name"),
    "header name ending in a line break": (
        {"headers": {"X-Name\n": "a"}},
        "invalid_headers",
        "X-Name",
    ),
    "header name outside ASCII": ({"headers": {"X-Nämé": "a"}}, "invalid_headers", "X-Nämé"),
    "content_type outside Latin-1": (
        {"body": "x", "content_type": "text/plain; x=日本"},
        "invalid_content_type",
        "content_type",
    ),
    "host with an empty label": ({"url": "http://a..example.com/"}, "invalid_url", "url"),
    "host with a 64-character label": (
        {"url": f"http://{'a' * 64}.example.com/"},
        "invalid_url",
        "url",
    ),
    "host starting with a dot": ({"url": "http://.example.com/"}, "invalid_url", "url"),
    "host with a percent sign": ({"url": "http://%zz/"}, "invalid_url", "url"),
    "cancel_notice unknown": (
        {"cancel_notice": "sometimes"},
        "invalid_cancel_notice",
        "cancel_notice",
    ),
}


@pytest.mark.parametrize(
    ("fields", "code", "named"), UNSENDABLE_JSON.values(), ids=UNSENDABLE_JSON.keys()
)
def test_unsendable_structured_tasks_are_400_naming_the_field(
    api: TestApp, fields: dict[str, Any], code: str, named: str
) -> None:
    error = error_of(api.post_json("/tasks", {"url": HOOK, **fields}, expect_errors=True))
    assert error["code"] == code, error
    assert named in error["message"], error
    assert api.get("/tasks").json["tasks"] == []


UNSENDABLE_QUERY = {
    "url host with an empty label": ({"url": "http://a..example.com/"}, "invalid_url", "url"),
    "cancel_notice unknown": (
        {"cancel_notice": "Always"},
        "invalid_cancel_notice",
        "cancel_notice",
    ),
}


@pytest.mark.parametrize(
    ("params", "code", "named"), UNSENDABLE_QUERY.values(), ids=UNSENDABLE_QUERY.keys()
)
def test_unsendable_pass_through_tasks_are_400_naming_the_field(
    api: TestApp, params: dict[str, str], code: str, named: str
) -> None:
    params = {"url": HOOK, **params}
    error = error_of(enqueue(api, params.pop("url"), b"x", headers=None, **params))
    assert error["code"] == code, error
    assert named in error["message"], error
    assert api.get("/tasks").json["tasks"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"NTQ-PASSTHROUGH-X-Name": "a\x01b"},
        {"NTQ-PASSTHROUGH-X-Name": "a\x7fb"},
        {"Content-Type": "text/plain\x01"},
    ],
    ids=["pass-through control character", "pass-through DEL", "Content-Type control character"],
)
def test_pass_through_values_with_control_characters_are_400(
    api: TestApp, headers: dict[str, str]
) -> None:
    """In front of ntq, the web server refuses these too (``test_hostile_input.py`` sends
    such bytes to a real one)."""
    response = enqueue(api, HOOK, b"x", headers=headers)
    assert response.status_int == 400, response.text
    assert api.get("/tasks").json["tasks"] == []
