"""Listing (issue 3, SPEC §3): ``GET /tasks`` newest first with filters, ``limit`` and a
cursor that stays correct while tasks are added. ``DELETE /`` and ``POST /tasks/{id}/retry``,
which need a worker, are in ``tests/acceptance/test_listing.py``."""

from __future__ import annotations

from typing import Any

from webtest import TestApp

from tests.support.web import call, enqueued, query

HOOK = "http://example.com/later"


def listing(api: TestApp, **params: Any) -> dict[str, Any]:
    response = api.get(query("/tasks", **params))
    assert response.status_int == 200, response.text
    data: dict[str, Any] = response.json
    return data


def ids(page: dict[str, Any]) -> list[str]:
    return [t["id"] for t in page["tasks"]]


def test_newest_first_with_status_and_time_filters_and_limit(api: TestApp) -> None:
    created = [enqueued(api, HOOK, delay=60) for _ in range(6)]
    for task_id in (created[1], created[4]):
        assert api.delete(f"/tasks/{task_id}").status_int == 204
    newest_first = created[::-1]

    page = listing(api)
    assert ids(page) == newest_first
    assert page["next"] is None
    assert {t["status"] for t in page["tasks"]} == {"PENDING", "CANCELLED"}

    assert ids(listing(api, status="CANCELLED")) == [created[4], created[1]]
    assert ids(listing(api, status="pending")) == [created[5], created[3], created[2], created[0]]
    assert ids(listing(api, status="COMPLETED")) == []

    limited = api.get(query("/tasks", limit=2))
    assert ids(limited.json) == newest_first[:2]
    assert limited.json["next"]
    assert 'rel="next"' in limited.headers["Link"]

    first = listing(api, status="CANCELLED", limit=1)
    assert ids(first) == [created[4]]
    second = api.get(first["next"]).json  # keeps the filter
    assert ids(second) == [created[1]]

    third = api.get(f"/tasks/{created[2]}").json["created"]
    assert ids(listing(api, created_after=third)) == newest_first[:3]
    assert ids(listing(api, created_before=third)) == [created[1], created[0]]

    for bad in (
        {"status": "DONE"},
        {"limit": 0},
        {"limit": 1001},
        {"limit": "x"},
        {"before": "nope"},
        {"created_after": "yesterday"},
    ):
        response = call(api, "GET", query("/tasks", **bad))
        assert response.status_int == 400, (bad, response.text)
        assert response.json["error"]["code"]


def test_cursor_pagination_stays_correct_while_tasks_are_added(api: TestApp) -> None:
    existing = [enqueued(api, HOOK, delay=60) for _ in range(10)]
    added: list[str] = []

    seen: list[str] = []
    page = listing(api, limit=3)
    pages = 0
    while True:
        pages += 1
        seen += ids(page)
        # New tasks arrive between the pages: they are newer than the cursor.
        added += [enqueued(api, HOOK, delay=60) for _ in range(2)]
        if not page["next"]:
            break
        response = api.get(page["next"])
        assert response.status_int == 200, response.text
        page = response.json
        assert pages < 10, "pagination does not end"

    assert seen == existing[::-1], "duplicates, gaps or wrong order across pages"
    assert len(set(seen)) == len(seen)
    everything = ids(listing(api, limit=1000))
    assert everything == (existing + added)[::-1]
