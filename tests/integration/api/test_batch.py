"""Structured and batch enqueue (issue 3, SPEC §3 ``POST /tasks``): one JSON task or an
array of up to 1,000 in one transaction, all or nothing, a bad item named by its index;
what the structured form refuses. Delivery of what it stores is in
``tests/acceptance/test_batch.py``."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine
from webtest import TestApp

from ntq.store.apps import Credentials
from tests.support.tasks import count_tasks
from tests.support.web import assert_error

HOOK = "http://example.com/b"


def test_a_batch_with_one_invalid_item_stores_nothing_and_names_it(
    api: TestApp, creds: Credentials, engine: Engine
) -> None:
    """Nothing stored is nothing a worker could deliver."""
    batch: list[dict[str, Any]] = [{"url": HOOK, "json": {"i": i}} for i in range(1000)]

    for index, bad in (
        (613, {"url": "ftp://example.com/x"}),
        (999, {"timeout": 0}),
        (0, {"method": "FETCH"}),
        (5, {"colour": "blue"}),
    ):
        items = [*batch[:index], {**batch[index], **bad}, *batch[index + 1 :]]
        error = assert_error(api.post_json("/tasks", items, expect_errors=True), 400)
        assert error.get("index") == index, error
        assert str(index) in error["message"]
        assert count_tasks(engine, creds.app_id) == 0, f"a batch bad at {index} stored tasks"

    too_many = api.post_json("/tasks", [*batch, batch[0]], expect_errors=True)
    assert assert_error(too_many, 413)["code"]
    assert count_tasks(engine, creds.app_id) == 0


def test_the_structured_form_refuses_what_it_cannot_store(
    api: TestApp, creds: Credentials, engine: Engine
) -> None:
    url = "http://example.com/never"

    def refused(status: int, body: bytes, content_type: str | None) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if content_type else {}
        return assert_error(api.post("/tasks", body, headers=headers, expect_errors=True), status)

    def refused_json(document: Any) -> dict[str, Any]:
        return assert_error(api.post_json("/tasks", document, expect_errors=True), 400)

    assert refused_json({"url": url, "colour": "blue"})["code"] == "unknown_field"
    document = json.dumps({"url": url}).encode()
    refused(415, document, "text/plain")
    refused(415, document, None)
    refused(400, b"{not json", "application/json")
    refused_json([])
    refused_json("a string")
    refused_json({"url": url, "body": "a", "json": 1})
    refused_json({"url": url, "body_base64": "%%%"})
    refused_json({"method": "POST"})
    assert count_tasks(engine, creds.app_id) == 0
