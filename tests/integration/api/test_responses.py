"""Stored responses and attempts before any attempt (issue 3, SPEC §3):
``GET /tasks/{id}/response`` is a 404, ``?wait=N`` waits about N seconds for one, and bad
``wait`` values are refused. Responses a worker stored are in
``tests/acceptance/test_responses.py``."""

from __future__ import annotations

import time

from webtest import TestApp

from tests.support.web import call, enqueued, query


def test_no_response_before_any_attempt(api: TestApp) -> None:
    task_id = enqueued(api, "http://example.com/later", delay=60)
    response = call(api, "GET", f"/tasks/{task_id}/response")
    assert response.status_int == 404, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json["error"]["code"]

    started = time.monotonic()
    waited = call(api, "GET", query(f"/tasks/{task_id}/response", wait=1))
    assert waited.status_int == 404
    assert 0.9 <= time.monotonic() - started < 3.0, "?wait=1 did not wait about 1 s"

    assert api.get(f"/tasks/{task_id}/attempts").json["attempts"] == []
    for bad in ("-1", "abc", "100000"):
        path = query(f"/tasks/{task_id}/response", wait=bad)
        assert call(api, "GET", path).status_int == 400
    unknown = "/tasks/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/response"
    assert call(api, "GET", unknown).status_int == 404
    assert call(api, "GET", "/tasks/not-a-uuid/attempts").status_int == 404
