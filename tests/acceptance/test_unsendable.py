"""A request that can never be sent (issue 10 item 10): refused at enqueue with a 400 naming
the field; and a task that reaches a worker anyway (stored before the rule existed, or led
there by a redirect) ends FAILED with the error recorded, instead of staying PENDING while
each expired lease brings it back."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from ntq.records import NewTask
from ntq.store.apps import Credentials
from ntq.store.enqueue import insert_task
from tests.conftest import module_stack
from tests.support.hook import HookServer
from tests.support.procs import Api
from tests.support.tasks import attempts, enqueue, finished

HOOK = "https://example.com/hook"

# The requeue poller finds the tasks this module writes straight into the database.
stack = module_stack(requeue=True)


def error_of(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.text
    error: dict[str, str] = response.json()["error"]
    return error


UNSENDABLE_JSON = {
    "header value outside Latin-1": ({"headers": {"X-Name": "日本"}}, "invalid_headers",
                                     "X-Name"),
    "header value with a control character": ({"headers": {"X-Name": "a\x01b"}},
                                              "invalid_headers", "X-Name"),
    "header value with leading space": ({"headers": {"X-Name": " a"}}, "invalid_headers",
                                        "X-Name"),
    "header name ending in a line break": ({"headers": {"X-Name\n": "a"}}, "invalid_headers",
                                           "X-Name"),
    "header name outside ASCII": ({"headers": {"X-Nämé": "a"}}, "invalid_headers", "X-Nämé"),
    "content_type outside Latin-1": ({"body": "x", "content_type": "text/plain; x=日本"},
                                     "invalid_content_type", "content_type"),
    "host with an empty label": ({"url": "http://a..example.com/"}, "invalid_url", "url"),
    "host with a 64-character label": ({"url": f"http://{'a' * 64}.example.com/"},
                                       "invalid_url", "url"),
    "host starting with a dot": ({"url": "http://.example.com/"}, "invalid_url", "url"),
    "host with a percent sign": ({"url": "http://%zz/"}, "invalid_url", "url"),
    "cancel_notice unknown": ({"cancel_notice": "sometimes"}, "invalid_cancel_notice",
                              "cancel_notice"),
}


@pytest.mark.parametrize(("fields", "code", "named"), UNSENDABLE_JSON.values(),
                         ids=UNSENDABLE_JSON.keys())
def test_unsendable_structured_tasks_are_400_naming_the_field(
        app: tuple[Api, Credentials], fields: dict[str, Any], code: str, named: str) -> None:
    api, _ = app
    error = error_of(api.post("/tasks", json={"url": HOOK, **fields}))
    assert error["code"] == code, error
    assert named in error["message"], error
    assert api.get("/tasks").json()["tasks"] == []


UNSENDABLE_QUERY = {
    "url host with an empty label": ({"url": "http://a..example.com/"}, "invalid_url", "url"),
    "cancel_notice unknown": ({"cancel_notice": "Always"}, "invalid_cancel_notice",
                              "cancel_notice"),
}


@pytest.mark.parametrize(("params", "code", "named"), UNSENDABLE_QUERY.values(),
                         ids=UNSENDABLE_QUERY.keys())
def test_unsendable_pass_through_tasks_are_400_naming_the_field(
        app: tuple[Api, Credentials], params: dict[str, str], code: str, named: str) -> None:
    api, _ = app
    params = {"url": HOOK, **params}
    error = error_of(api.enqueue(params.pop("url"), b"x", "text/plain", **params))
    assert error["code"] == code, error
    assert named in error["message"], error
    assert api.get("/tasks").json()["tasks"] == []


@pytest.mark.parametrize("headers", [
    {"NTQ-PASSTHROUGH-X-Name": "a\x01b"}, {"NTQ-PASSTHROUGH-X-Name": "a\x7fb"},
    {"Content-Type": "text/plain\x01"},
], ids=["pass-through control character", "pass-through DEL", "Content-Type control character"])
def test_pass_through_values_with_control_characters_are_400(
        app: tuple[Api, Credentials], headers: dict[str, str]) -> None:
    """The web server refuses these before ntq sees them (ntq would too: see above)."""
    api, _ = app
    response = api.enqueue(HOOK, b"x", headers=headers)
    assert response.status_code == 400, response.text
    assert api.get("/tasks").json()["tasks"] == []


def stored(engine: Engine, creds: Credentials, new: NewTask) -> str:
    """A task written straight into the database: what the API now refuses, as a task stored
    before the rule existed would be."""
    with engine.begin() as conn:
        task, _ = insert_task(conn, new, creds.app_id)
    return str(task.id)


def assert_failed_at_once(api: Api, task_id: str, *words: str) -> None:
    task = finished(api, task_id, timeout=20)
    assert (task["status"], task["retry_count"]) == ("FAILED", 1), task
    (attempt,) = attempts(api, task_id)
    assert attempt["outcome"] == "fail", attempt
    assert attempt["status_code"] is None
    for word in words:
        assert word in attempt["error"], attempt
        assert word in task["last_error"], task


@pytest.mark.parametrize(("new", "words"), [
    ({"headers": {"X-Name": "日本"}}, ("latin-1",)),
    ({"content_type": "text/plain; x=日本"}, ("latin-1",)),
    ({"headers": {"X-Name": " leading space"}}, ("InvalidHeader",)),
    ({"host": "a..example.com"}, ("label",)),
], ids=["header value", "content type", "leading space", "host label"])
def test_a_stored_unsendable_task_fails_with_the_error_recorded(
        app: tuple[Api, Credentials], engine: Engine, hook: HookServer,
        new: dict[str, Any], words: tuple[str, ...]) -> None:
    api, creds = app
    url = hook.script("/unsendable").replace("127.0.0.1", new.get("host", "127.0.0.1"))
    fields = {name: value for name, value in new.items() if name != "host"}
    task_id = stored(engine, creds, NewTask(url=url, body=b"x", max_retries=5, **fields))
    assert_failed_at_once(api, task_id, *words)
    assert hook.requests("/unsendable") == []


def test_a_redirect_to_an_unusable_host_fails_with_the_error_recorded(
        app: tuple[Api, Credentials], hook: HookServer) -> None:
    api, _ = app
    url = hook.script("/moved", {"status": 302,
                                 "headers": {"Location": "http://a..example.com/x"}})
    task_id = enqueue(api, url, max_retries=5)
    assert_failed_at_once(api, task_id, "label")
    assert len(hook.requests("/moved")) == 1
