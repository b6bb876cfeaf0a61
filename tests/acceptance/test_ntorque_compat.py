"""``NTQ_NTORQUE_COMPAT=true``: a team migrating from nTorque keeps its client and its hooks.

nTorque 0.4.2's own client is Python 2 only, so :func:`ntorque_enqueue` sends exactly what
its ``HTTPTorqueClient`` with a ``DirectDispatcher`` sends: ``requests.post`` to the torque
URL with ``url``, ``method`` and ``timeout`` urlencoded in the query, the data as an
already-encoded string (so no ``Content-Type``), and the key in both ``TORQUE_API_KEY`` and
``NTORQUE_API_KEY`` headers. That ``GET /`` answers without a key in this mode is tested in
process: ``tests/integration/api/test_ntorque_compat.py``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import requests
from webob import Request

from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.hook import HookServer, Received
from tests.support.procs import Api, Stack
from tests.support.tasks import finished

stack = module_stack(NTQ_NTORQUE_COMPAT="true")


def ntorque_enqueue(
    torque_url: str,
    api_key: str,
    url: str,
    data: str | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: int | None = None,
) -> requests.Response:
    """``HTTPTorqueClient(DirectDispatcher(), torque_url, api_key)(url, data, ...)``."""
    headers = {**(headers or {}), "TORQUE_API_KEY": api_key, "NTORQUE_API_KEY": api_key}
    query: dict[str, Any] = {"url": url}
    if method is not None:
        query["method"] = method
    if timeout is not None:
        query["timeout"] = timeout
    divider = "&" if "?" in torque_url else "?"
    return requests.post(
        f"{torque_url}{divider}{urlencode(query)}", data=data, headers=headers, timeout=10
    )


def form_of(received: Received) -> dict[str, str]:
    """The delivery as a web framework's form parser (WebOb's) reads it."""
    request = Request.blank(
        received.path,
        method=received.method,
        body=received.body,
        headers={"Content-Type": received.headers["Content-Type"]},
    )
    return dict(request.POST)


def test_an_ntorque_client_form_post_arrives_readable_by_a_form_parser(
    app: tuple[Api, Credentials], stack: Stack, hook: HookServer
) -> None:
    api, creds = app
    url = hook.script("/form")
    response = ntorque_enqueue(
        stack.url + "/", creds.api_key, url, data=urlencode({"name": "café", "n": "1"}), timeout=30
    )
    assert response.status_code == 201, response.text
    task_id = response.headers["Location"].rsplit("/", 1)[1]
    assert response.json()["id"] == task_id

    (received,) = hook.wait_for(1, "/form")
    assert received.headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert form_of(received) == {"name": "café", "n": "1"}
    assert received.headers["ntorque-task-id"] == task_id
    assert received.headers["ntorque-task-retry-count"] == "0"
    assert received.headers["ntorque-task-retry-limit"] == str(api.task(task_id)["max_retries"])
    assert received.headers["NTQ-Task-Attempt"] == "1"
    assert finished(api, task_id)["status"] == "COMPLETED"


def test_ntorque_retry_count_counts_the_attempts_before_this_one(
    app: tuple[Api, Credentials], stack: Stack, hook: HookServer
) -> None:
    _, creds = app
    url = hook.script("/flaky", {"status": 503}, {"status": 200})
    response = ntorque_enqueue(stack.url + "/", creds.api_key, url, data="x=1")
    assert response.status_code == 201, response.text

    first, second = hook.wait_for(2, "/flaky")
    assert [r.headers["ntorque-task-retry-count"] for r in (first, second)] == ["0", "1"]
    assert [r.headers["NTQ-Task-Attempt"] for r in (first, second)] == ["1", "2"]


def test_a_body_sent_with_its_own_content_type_keeps_it(
    app: tuple[Api, Credentials], stack: Stack, hook: HookServer
) -> None:
    _, creds = app
    url = hook.script("/json")
    response = ntorque_enqueue(
        stack.url + "/",
        creds.api_key,
        url,
        data='{"a": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text

    (received,) = hook.wait_for(1, "/json")
    assert received.headers["Content-Type"] == "application/json"
    assert received.body == b'{"a": 1}'
