"""Request parsing (``ntq.web.api.schemas``): JSON tasks and batches, the pass-through
headers and query of ``POST /``, the filters of ``GET /tasks``, ``?wait=``; the limits and
the error each refusal carries. Pure: no server, no database. (``POST /``'s parameter
names are in ``test_query_parameters.py``.)"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from ntq.config import Settings
from ntq.records import NewTask
from ntq.web.api import schemas
from ntq.web.api.errors import ApiError

HOOK = "https://example.com/hook"
SETTINGS = Settings()


def refusal(parse: Callable[[], Any], status: int = 400) -> ApiError:
    """The ApiError ``parse`` raises, with ``status``."""
    with pytest.raises(ApiError) as info:
        parse()
    assert info.value.status == status, info.value.message
    assert info.value.message
    return info.value


def task(**fields: Any) -> NewTask:
    return schemas.from_json({"url": HOOK, **fields}, SETTINGS)


def json_refusal(status: int = 400, **fields: Any) -> ApiError:
    return refusal(lambda: task(**fields), status)


# --- one JSON task ------------------------------------------------------------------------


def test_a_minimal_task_takes_the_settings_defaults() -> None:
    new = task()
    assert (new.url, new.method, new.body, new.content_type, new.headers) == (
        HOOK,
        "POST",
        b"",
        None,
        {},
    )
    assert (new.timeout, new.max_retries, new.backoff) == (
        SETTINGS.default_timeout,
        SETTINGS.max_retries,
        SETTINGS.backoff,
    )
    assert (new.delay, new.not_before, new.callback, new.idempotency_key) == (0.0, None, None, None)
    assert new.cancel_notice == "started"


def test_every_field_is_read() -> None:
    new = task(
        method="put",
        headers={"X-Trace": "t-1"},
        timeout=5,
        delay=2.5,
        max_retries=0,
        backoff="linear",
        callback="https://example.com/done",
        idempotency_key="order-1",
        cancel_notice="always",
    )
    assert (new.method, new.headers, new.timeout, new.delay) == ("PUT", {"X-Trace": "t-1"}, 5, 2.5)
    assert (new.max_retries, new.backoff, new.callback) == (0, "linear", "https://example.com/done")
    assert (new.idempotency_key, new.cancel_notice) == ("order-1", "always")


@pytest.mark.parametrize(
    ("fields", "body", "content_type"),
    [
        ({"body": "plain ✓"}, "plain ✓".encode(), "text/plain; charset=utf-8"),
        ({"json": {"a": [1, "ü"]}}, b'{"a":[1,"\xc3\xbc"]}', "application/json"),
        ({"body_base64": base64.b64encode(b"\x00\xff").decode()}, b"\x00\xff", None),
        ({"body": "x", "content_type": "text/csv"}, b"x", "text/csv"),
    ],
    ids=["body", "json", "body_base64", "own content_type"],
)
def test_the_body_forms(fields: dict[str, Any], body: bytes, content_type: str | None) -> None:
    new = task(**fields)
    assert (new.body, new.content_type) == (body, content_type)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"url": None}, "invalid_url"),
        ({"url": ["http://example.com/"]}, "invalid_url"),
        ({"url": "javascript:alert(1)"}, "invalid_url"),
        ({"callback": "ftp://example.com/"}, "invalid_callback"),
        ({"method": "TRACE"}, "invalid_method"),
        ({"method": 5}, "invalid_method"),
        ({"timeout": 0}, "invalid_timeout"),
        ({"timeout": True}, "invalid_timeout"),
        ({"timeout": 1.5}, "invalid_timeout"),
        ({"timeout": "NaN"}, "invalid_timeout"),
        ({"delay": -1}, "invalid_delay"),
        ({"delay": float("inf")}, "invalid_delay"),
        ({"delay": 1, "not_before": "2030-01-01T00:00:00Z"}, "invalid_delay"),
        ({"not_before": "next tuesday"}, "invalid_not_before"),
        ({"not_before": "1969-12-31T23:59:59Z"}, "invalid_not_before"),
        ({"max_retries": -1}, "invalid_max_retries"),
        ({"max_retries": 1001}, "invalid_max_retries"),
        ({"backoff": "fibonacci"}, "invalid_backoff"),
        ({"cancel_notice": "sometimes"}, "invalid_cancel_notice"),
        ({"body": "a", "json": 1}, "invalid_body"),
        ({"body": 123}, "invalid_body"),
        ({"body_base64": "!!!"}, "invalid_body"),
        ({"content_type": ""}, "invalid_content_type"),
        ({"content_type": "text/plain\r\nX: 1"}, "invalid_content_type"),
        ({"idempotency_key": ""}, "invalid_idempotency_key"),
        ({"idempotency_key": "k" * 256}, "invalid_idempotency_key"),
        ({"idempotency_key": "a\tb"}, "invalid_idempotency_key"),
        ({"priority": "high"}, "unknown_field"),
    ],
)
def test_bad_fields_are_refused_with_a_code_naming_them(fields: dict[str, Any], code: str) -> None:
    assert json_refusal(**fields).code == code


def test_limits_are_inclusive() -> None:
    assert task(timeout=SETTINGS.max_timeout).timeout == SETTINGS.max_timeout
    assert json_refusal(timeout=SETTINGS.max_timeout + 1).message == (
        f"timeout must be between 1 and {SETTINGS.max_timeout}"
    )
    assert task(max_retries=1000).max_retries == 1000
    assert task(delay=schemas.MAX_DELAY).delay == schemas.MAX_DELAY
    assert task(idempotency_key="k" * 255).idempotency_key == "k" * 255


def test_unknown_fields_are_all_named_in_order() -> None:
    error = json_refusal(status=400, zeta=1, alpha=2)
    assert error.message == "unknown field(s): alpha, zeta"


def test_a_body_over_the_limit_is_413() -> None:
    small = dataclasses.replace(SETTINGS, max_body_bytes=4)
    assert schemas.from_json({"url": HOOK, "body": "four"}, small).body == b"four"
    error = refusal(lambda: schemas.from_json({"url": HOOK, "body": "fives"}, small), 413)
    assert (error.code, error.message) == ("body_too_large", "body must be at most 4 bytes")


@pytest.mark.parametrize("item", ["https://example.com/", None, 1, [HOOK]])
def test_a_task_that_is_not_an_object_is_refused(item: Any) -> None:
    assert refusal(lambda: schemas.from_json(item, SETTINGS)).code == "invalid_task"


# --- not_before ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),  # naive means UTC
        ("2024-01-02T04:04:05+01:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("1704067200", datetime(2024, 1, 1, tzinfo=UTC)),
        (1704067200.5, datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ],
    ids=["Z", "naive", "offset", "epoch text", "epoch number"],
)
def test_not_before_in_every_accepted_form_the_past_included(
    given: Any, expected: datetime
) -> None:
    assert task(not_before=given).not_before == expected


def test_not_before_at_most_a_year_ahead() -> None:
    soon = datetime.now(UTC) + timedelta(days=300)
    assert task(not_before=soon.isoformat()).not_before == soon
    later = datetime.now(UTC) + timedelta(days=400)
    assert json_refusal(not_before=later.isoformat()).message == (
        "not_before must be within a year"
    )


# --- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (["X-A: 1"], "must be an object"),
        ({"X A": "b"}, "not a valid header name"),
        ({"X-A": 5}, "not a valid header name"),
        ({"X-A": "a\r\nX-B: 1"}, "control characters"),
        ({"X-A": " a"}, "nor start or end with a space"),
        ({"X-A": "日本"}, "Latin-1"),
        ({"Host": "internal.example"}, "set by ntq"),
        ({"webhook-signature": "v1,forged"}, "set by ntq"),
        ({"NTQ-Task-Id": "forged"}, "set by ntq"),
        ({f"X-H{i}": "v" for i in range(schemas.MAX_HEADERS + 1)}, "at most 50 headers"),
        ({f"X-Big{i}": "v" * 6000 for i in range(3)}, "at most 16384 bytes"),
    ],
)
def test_headers_that_cannot_or_must_not_be_sent(headers: Any, words: str) -> None:
    error = refusal(lambda: schemas.headers_to_send(headers))
    assert error.code == "invalid_headers"
    assert words in error.message, error.message


def test_header_values_http_can_carry() -> None:
    sendable = {"X-A": "a b\tc", "X-Latin": "café", "X-Empty": ""}
    assert schemas.headers_to_send(sendable) == sendable


def test_pass_through_headers_lose_their_prefix() -> None:
    given = {
        "NTQ-PASSTHROUGH-X-Trace": "t-1",
        "NTORQUE-PASSTHROUGH-X-Tenant": "a",
        "NTQ-PASSTHROUGH-": "no name",
        "Accept": "*/*",
    }
    assert schemas.passthrough(given) == {"X-Trace": "t-1", "X-Tenant": "a"}
    error = refusal(lambda: schemas.passthrough({"NTQ-PASSTHROUGH-Host": "x"}))
    assert "pass-through header 'Host'" in error.message


# --- POST / (query, headers and body) ----------------------------------------------------------


def from_query(
    params: dict[str, str],
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
    settings: Settings = SETTINGS,
) -> NewTask:
    return schemas.from_query(params, headers or {}, b"data", content_type, settings)


def test_the_pass_through_form() -> None:
    new = from_query(
        {"url": HOOK, "timeout": " 5 ", "delay": "1.5"},
        {"NTQ-PASSTHROUGH-X-Trace": "t", "Idempotency-Key": "k-1"},
        "text/csv",
    )
    assert (new.body, new.content_type, new.timeout, new.delay) == (b"data", "text/csv", 5, 1.5)
    assert (new.headers, new.idempotency_key) == ({"X-Trace": "t"}, "k-1")


def test_a_body_without_a_content_type_is_form_data_only_in_ntorque_mode() -> None:
    assert from_query({"url": HOOK}).content_type is None
    compat = dataclasses.replace(SETTINGS, ntorque_compat=True)
    assert from_query({"url": HOOK}, settings=compat).content_type == (schemas.NTORQUE_CONTENT_TYPE)
    assert (
        from_query({"url": HOOK}, content_type="text/plain", settings=compat).content_type
        == "text/plain"
    )


@pytest.mark.parametrize(
    ("params", "headers", "content_type", "code"),
    [
        ({}, {}, None, "invalid_url"),
        ({"url": HOOK, "timeout": "sixty"}, {}, None, "invalid_timeout"),
        ({"url": HOOK, "delay": "nan"}, {}, None, "invalid_delay"),
        ({"url": HOOK}, {"Idempotency-Key": "k" * 256}, None, "invalid_idempotency_key"),
        ({"url": HOOK}, {"NTQ-PASSTHROUGH-X-A": "a\x01b"}, None, "invalid_headers"),
        ({"url": HOOK}, {}, "text/plain\x01", "invalid_content_type"),
    ],
)
def test_the_pass_through_form_refuses_what_the_json_form_refuses(
    params: dict[str, str], headers: dict[str, str], content_type: str | None, code: str
) -> None:
    assert refusal(lambda: from_query(params, headers, content_type)).code == code


# --- batches and the JSON document -----------------------------------------------------------


def test_a_batch_keeps_its_order() -> None:
    batch = schemas.from_json_batch([{"url": f"{HOOK}?i={i}"} for i in range(3)], SETTINGS)
    assert [new.url for new in batch] == [f"{HOOK}?i={i}" for i in range(3)]


def test_the_first_bad_item_of_a_batch_is_named_by_its_index() -> None:
    items: list[dict[str, Any]] = [{"url": HOOK}] * 3 + [
        {"url": HOOK, "timeout": 0},
        {"url": "nope"},
    ]
    error = refusal(lambda: schemas.from_json_batch(items, SETTINGS))
    assert (error.code, error.extra) == ("invalid_timeout", {"index": 3})
    assert error.message.startswith("task 3: timeout must be")


@pytest.mark.parametrize(
    ("items", "status", "code"),
    [
        ([], 400, "invalid_batch"),
        ({"url": HOOK}, 400, "invalid_batch"),
        ("a string", 400, "invalid_batch"),
        ([{"url": HOOK}] * (schemas.MAX_BATCH + 1), 413, "batch_too_large"),
    ],
)
def test_what_is_not_a_batch(items: Any, status: int, code: str) -> None:
    assert refusal(lambda: schemas.from_json_batch(items, SETTINGS), status).code == code


def test_a_batch_of_the_maximum_size_is_read() -> None:
    assert len(schemas.from_json_batch([{"url": HOOK}] * schemas.MAX_BATCH, SETTINGS)) == 1000


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
def test_json_documents(content_type: str) -> None:
    assert schemas.json_document(content_type, b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize(
    ("content_type", "raw", "status", "code"),
    [
        (None, b"{}", 415, "unsupported_media_type"),
        ("text/plain", b"{}", 415, "unsupported_media_type"),
        ("application/json", b'{"url": ', 400, "invalid_json"),
        ("application/json", b'{"a": NaN}', 400, "invalid_json"),
        ("application/json", b'"\xff"', 400, "invalid_json"),
    ],
)
def test_what_is_not_a_json_document(
    content_type: str | None, raw: bytes, status: int, code: str
) -> None:
    assert refusal(lambda: schemas.json_document(content_type, raw), status).code == code


# --- GET /tasks and ?wait= ----------------------------------------------------------------------


def test_the_listing_defaults() -> None:
    wanted = schemas.task_filter({})
    assert (
        wanted.status,
        wanted.created_after,
        wanted.created_before,
        wanted.before,
        wanted.limit,
    ) == (None, None, None, None, 100)


def test_every_listing_filter_is_read() -> None:
    cursor = uuid.uuid4()
    wanted = schemas.task_filter(
        {
            "status": "pending",
            "limit": "1000",
            "before": str(cursor),
            "created_after": "2024-01-01T00:00:00Z",
            "created_before": "1704067200",
        }
    )
    assert (wanted.status, wanted.limit, wanted.before) == ("PENDING", 1000, cursor)
    assert wanted.created_after == wanted.created_before == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "DONE"}, "invalid_status"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "1e9"}, "invalid_limit"),
        ({"limit": "x"}, "invalid_limit"),
        ({"before": "nope"}, "invalid_cursor"),
        ({"created_after": "yesterday"}, "invalid_created_after"),
        ({"created_before": "1e30"}, "invalid_created_before"),
    ],
)
def test_bad_listing_filters(params: dict[str, str], code: str) -> None:
    assert refusal(lambda: schemas.task_filter(params)).code == code


def test_wait_seconds() -> None:
    assert schemas.wait_seconds(None, 30) == 0.0
    assert schemas.wait_seconds("2.5", 30) == 2.5
    assert schemas.wait_seconds("30", 30) == 30.0
    for raw in ("-1", "NaN", "abc", "30.1"):
        assert refusal(partial(schemas.wait_seconds, raw, 30)).code == "invalid_wait"
