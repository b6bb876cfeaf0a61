"""Hostile and malformed requests (SPEC §3, §5; issue 4 item 3), in process.

Each row of the table reaches the app as a WSGI server would hand it over. Every one must
get the right 4xx status with a JSON ``{"error": {"code", "message"}}`` body — never a 500,
never HTML — and none may create a task. What only a real web server sees (broken framing,
lying ``Content-Length``, bytes no header parser lets through, size limits on the request
head) is sent as raw bytes in ``tests/acceptance/test_hostile_input.py``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import Engine
from webtest import TestApp, TestResponse

from ntq.store.apps import Credentials
from tests.integration.api.conftest import count_rows
from tests.support.web import enqueued

GOOD = "http://example.com/hook"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    target: str
    status: int | tuple[int, ...]
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    auth: bool = True


def as_sent(value: str) -> str:
    """A header value as a WSGI server passes it on: its UTF-8 bytes, read as Latin-1."""
    return value.encode().decode("latin-1")


def enq(
    name: str,
    status: int | tuple[int, ...],
    code: str | None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    **params: Any,
) -> Case:
    """``POST /`` (the nTorque form) with a valid url unless the row overrides it."""
    query = {"url": GOOD, **params}
    query = {k: v for k, v in query.items() if v is not None}
    return Case(
        name,
        "POST",
        "/?" + urlencode(query, quote_via=quote),
        status,
        code,
        headers=(("Content-Type", "text/plain"), *headers),
        body=b"payload",
    )


def js(
    name: str,
    status: int | tuple[int, ...],
    code: str | None,
    document: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str | None = "application/json",
) -> Case:
    """``POST /tasks`` (the structured form)."""
    body = raw if raw is not None else json.dumps(document, ensure_ascii=False).encode()
    headers = (("Content-Type", content_type),) if content_type else ()
    return Case(name, "POST", "/tasks", status, code, headers=headers, body=body)


def task(**fields: Any) -> dict[str, Any]:
    return {"url": GOOD, **fields}


def get(
    name: str,
    path: str,
    status: int | tuple[int, ...],
    code: str | None = None,
    method: str = "GET",
) -> Case:
    return Case(name, method, path, status, code)


CASES: list[Case] = [
    # --- URLs and schemes ---------------------------------------------------------------
    enq("url missing", 400, "invalid_url", url=None),
    enq("url empty", 400, "invalid_url", url=""),
    enq("javascript: url", 400, "invalid_url", url="javascript:alert(document.cookie)"),
    enq("file: url", 400, "invalid_url", url="file:///etc/passwd"),
    enq(
        "gopher: url (smuggles SMTP)", 400, "invalid_url", url="gopher://127.0.0.1:25/_HELO%20evil"
    ),
    enq("ftp: url", 400, "invalid_url", url="ftp://example.com/"),
    enq("dict: url", 400, "invalid_url", url="dict://127.0.0.1:11211/stat"),
    enq("data: url", 400, "invalid_url", url="data:text/plain,hello"),
    enq("relative url", 400, "invalid_url", url="/just/a/path"),
    enq("scheme-relative url", 400, "invalid_url", url="//example.com/x"),
    enq("url without host", 400, "invalid_url", url="http:///no-host"),
    enq("url port out of range", 400, "invalid_url", url="http://example.com:99999/"),
    enq("url port zero", 400, "invalid_url", url="http://example.com:0/"),
    enq("url broken IPv6 literal", 400, "invalid_url", url="http://[::1/"),
    enq("url over 2048 characters", 400, "invalid_url", url=GOOD + "?" + "a" * 2048),
    enq("url with a space", 400, "invalid_url", url="http://exa mple.com/"),
    enq(
        "url with CRLF (header injection)",
        400,
        "invalid_url",
        url="http://example.com/\r\nX-Injected: 1",
    ),
    enq("url with NUL", 400, "invalid_url", url="http://example.com/\x00"),
    enq("url host with RTL override", 400, "invalid_url", url="http://evil\u202ecom.example/"),
    enq("url emoji host", 400, "invalid_url", url="http://\U0001f600.example/"),
    enq("callback javascript:", 400, "invalid_callback", callback="javascript:alert(1)"),
    enq("callback file:", 400, "invalid_callback", callback="file:///etc/shadow"),
    # --- numbers --------------------------------------------------------------------------
    enq("timeout negative", 400, "invalid_timeout", timeout="-1"),
    enq("timeout zero", 400, "invalid_timeout", timeout="0"),
    enq("timeout huge", 400, "invalid_timeout", timeout="9" * 40),
    enq("timeout NaN", 400, "invalid_timeout", timeout="NaN"),
    enq("timeout fractional", 400, "invalid_timeout", timeout="1.5"),
    enq("timeout not a number", 400, "invalid_timeout", timeout="ten"),
    enq("delay negative", 400, "invalid_delay", delay="-5"),
    enq("delay NaN", 400, "invalid_delay", delay="NaN"),
    enq("delay infinite", 400, "invalid_delay", delay="inf"),
    enq("delay overflows a double", 400, "invalid_delay", delay="1e309"),
    enq("delay beyond a year", 400, "invalid_delay", delay=str(400 * 86400)),
    enq("max_retries negative", 400, "invalid_max_retries", max_retries="-1"),
    enq("max_retries huge", 400, "invalid_max_retries", max_retries="1e100"),
    enq("not_before garbage", 400, "invalid_not_before", not_before="next tuesday"),
    enq("not_before epoch overflow", 400, "invalid_not_before", not_before="1e30"),
    enq("not_before far future", 400, "invalid_not_before", not_before="9999-12-31T00:00:00Z"),
    enq(
        "not_before in year 0 once in UTC",
        400,
        "invalid_not_before",
        not_before="0001-01-01T00:00:00+01:00",
    ),
    enq("not_before before 1970", 400, "invalid_not_before", not_before="1969-12-31T23:59:59Z"),
    Case(
        "query string not UTF-8",
        "POST",
        "/?url=http%3A%2F%2Fexample.com%2F%ff",
        400,
        "invalid_encoding",
        headers=(("Content-Type", "text/plain"),),
        body=b"x",
    ),
    Case(
        "query string not UTF-8, unknown key",
        "POST",
        "/?url=http%3A%2F%2Fexample.com%2F%ff",
        401,
        "unauthorized",
        auth=False,
        body=b"x",
        headers=(("Authorization", "Bearer ntq_notakey"), ("Content-Type", "text/plain")),
    ),
    # Answered before the body is read: the 10 MB announced are never sent.
    enq("delay and not_before together", 400, None, delay="1", not_before="2030-01-01T00:00:00Z"),
    enq("method TRACE", 400, "invalid_method", method="TRACE"),
    enq("method CONNECT", 400, "invalid_method", method="CONNECT"),
    enq("method with CRLF", 400, "invalid_method", method="GET\r\nX: 1"),
    enq("backoff unknown", 400, "invalid_backoff", backoff="quadratic"),
    # --- pass-through headers ---------------------------------------------------------------
    enq(
        "pass-through Host",
        400,
        "invalid_headers",
        headers=(("NTQ-PASSTHROUGH-Host", "internal.example"),),
    ),
    enq(
        "pass-through Content-Length",
        400,
        "invalid_headers",
        headers=(("NTQ-PASSTHROUGH-Content-Length", "0"),),
    ),
    enq(
        "pass-through Transfer-Encoding",
        400,
        "invalid_headers",
        headers=(("NTQ-PASSTHROUGH-Transfer-Encoding", "chunked"),),
    ),
    enq(
        "pass-through forged webhook-signature",
        400,
        "invalid_headers",
        headers=(("NTQ-PASSTHROUGH-webhook-signature", "v1,forged"),),
    ),
    enq(
        "pass-through forged NTQ-Task-Id (nTorque prefix)",
        400,
        "invalid_headers",
        headers=(("NTORQUE-PASSTHROUGH-NTQ-Task-Id", "forged"),),
    ),
    enq(
        "51 pass-through headers",
        400,
        "invalid_headers",
        headers=tuple((f"NTQ-PASSTHROUGH-X-H{i}", "v") for i in range(51)),
    ),
    enq(
        "pass-through headers over 16 KiB in total",
        400,
        "invalid_headers",
        headers=tuple((f"NTQ-PASSTHROUGH-X-Big{i}", "v" * 6000) for i in range(3)),
    ),
    # --- Idempotency-Key ------------------------------------------------------------------
    enq(
        "Idempotency-Key empty", 400, "invalid_idempotency_key", headers=(("Idempotency-Key", ""),)
    ),
    enq(
        "Idempotency-Key too long",
        400,
        "invalid_idempotency_key",
        headers=(("Idempotency-Key", "k" * 256),),
    ),
    enq(
        "Idempotency-Key with a tab",
        400,
        "invalid_idempotency_key",
        headers=(("Idempotency-Key", "a\tb"),),
    ),
    enq(
        "Idempotency-Key with RTL override",
        400,
        "invalid_idempotency_key",
        headers=(("Idempotency-Key", as_sent("abc\u202edef")),),
    ),
    # --- the structured form ----------------------------------------------------------------
    js("text/plain body", 415, "unsupported_media_type", task(), content_type="text/plain"),
    js("no content type", 415, "unsupported_media_type", task(), content_type=None),
    js(
        "form-encoded body",
        415,
        "unsupported_media_type",
        raw=b"url=http%3A%2F%2Fexample.com%2F",
        content_type="application/x-www-form-urlencoded",
    ),
    js("broken JSON", 400, "invalid_json", raw=b'{"url": '),
    js("JSON with trailing garbage", 400, "invalid_json", raw=b'{"url": "%s"} x' % GOOD.encode()),
    js("JSON NaN literal", 400, None, raw=b'{"url": "%s", "timeout": NaN}' % GOOD.encode()),
    js("JSON invalid UTF-8", 400, "invalid_json", raw=b'{"url": "http://example.com/\xff"}'),
    js("JSON nested 100,000 deep", 400, None, raw=b"[" * 100_000 + b"]" * 100_000),
    js(
        "JSON integer beyond 64 bits",
        400,
        None,
        raw=b'{"url": "%s", "timeout": %d}' % (GOOD.encode(), 2**70),
    ),
    js("empty batch", 400, "invalid_batch", []),
    js("JSON string", 400, "invalid_batch", "http://example.com/"),
    js("JSON null", 400, "invalid_batch", None),
    js("batch of numbers", 400, "invalid_task", [1, 2]),
    js("unknown field", 400, "unknown_field", task(evil=1)),
    js("unknown field app (enqueue for another app)", 400, "unknown_field", task(app="other")),
    js("unknown field status", 400, "unknown_field", task(status="COMPLETED")),
    js("unknown field id", 400, "unknown_field", task(id=str(uuid.uuid4()))),
    js("unknown field __proto__", 400, "unknown_field", task(__proto__={"admin": True})),
    js("headers not an object", 400, "invalid_headers", task(headers=["X-A: b"])),
    js("header value with CRLF", 400, "invalid_headers", task(headers={"X-A": "a\r\nInjected: 1"})),
    js("header value with NUL", 400, "invalid_headers", task(headers={"X-A": "a\x00b"})),
    js("header name with CRLF", 400, "invalid_headers", task(headers={"X-A\r\nInjected": "1"})),
    js("header name with a space", 400, "invalid_headers", task(headers={"X A": "b"})),
    js("header value not a string", 400, "invalid_headers", task(headers={"X-A": 5})),
    js("header Host", 400, "invalid_headers", task(headers={"Host": "internal.example"})),
    js("timeout boolean", 400, "invalid_timeout", task(timeout=True)),
    js("timeout string NaN", 400, "invalid_timeout", task(timeout="NaN")),
    js("timeout negative", 400, "invalid_timeout", task(timeout=-30)),
    js("delay huge", 400, "invalid_delay", task(delay=1e300)),
    js("max_retries negative", 400, "invalid_max_retries", task(max_retries=-1)),
    js("url javascript:", 400, "invalid_url", task(url="javascript:alert(1)")),
    js("url not a string", 400, "invalid_url", task(url=["http://example.com/"])),
    js("body and json together", 400, "invalid_body", task(body="a", json={"b": 1})),
    js("body_base64 invalid", 400, "invalid_body", task(body_base64="!!!not base64!!!")),
    js("body not a string", 400, "invalid_body", task(body=123)),
    js(
        "content_type with CRLF",
        400,
        "invalid_content_type",
        task(content_type="text/plain\r\nX-Injected: 1"),
    ),
    js("idempotency_key empty", 400, "invalid_idempotency_key", task(idempotency_key="")),
    js("idempotency_key not a string", 400, "invalid_idempotency_key", task(idempotency_key=5)),
    js(
        "batch with one bad task (all or nothing)",
        400,
        None,
        [task(), task(), task(url="file:///etc/passwd")],
    ),
    js("batch of 1,001 tasks", 413, "batch_too_large", [task()] * 1001),
    # --- sizes ---------------------------------------------------------------------------------
    Case(
        "body over 1 MiB",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        413,
        "body_too_large",
        headers=(("Content-Type", "application/octet-stream"),),
        body=b"x" * (MiB + 1),
    ),
    js("JSON body field over 1 MiB", 413, "body_too_large", task(body="x" * (MiB + 1))),
    # --- ids: traversal, SQL, odd bytes -------------------------------------------------------
    get("traversal ../../etc/passwd", "/tasks/../../etc/passwd", 404),
    get("traversal %2e%2e", "/tasks/%2e%2e/%2e%2e/etc/passwd", 404),
    get("traversal %2f", "/tasks/..%2f..%2fetc%2fpasswd", 404),
    get("traversal backslashes", "/tasks/..%5c..%5cwindows%5cwin.ini", 404),
    get("SQL in id", "/tasks/1'%20OR%20'1'%3D'1", 404, "not_found"),
    get("SQL stacked query in id", "/tasks/1%3BDROP%20TABLE%20tasks", 404, "not_found"),
    get("SQL in id on cancel", "/tasks/'%20OR%201%3D1--", 404, "not_found", method="DELETE"),
    get("SQL in id on retry", "/tasks/'%20OR%201%3D1--/retry", 404, "not_found", method="POST"),
    get(
        "SQL in id on attempts",
        "/tasks/x'%20UNION%20SELECT%20*%20FROM%20api_keys--/attempts",
        404,
        "not_found",
    ),
    get("NUL in id", "/tasks/%00", 404, "not_found"),
    get("NUL after a real id", "/tasks/{seed}%00", 404, "not_found"),
    get("emoji id", "/tasks/%F0%9F%98%80", 404, "not_found"),
    get("unknown task", f"/tasks/{uuid.UUID(int=0)}", 404, "not_found"),
    get("unknown route", "/admin", 404),
    # --- filters -------------------------------------------------------------------------------
    get("limit negative", "/tasks?limit=-1", 400, "invalid_limit"),
    get("limit zero", "/tasks?limit=0", 400, "invalid_limit"),
    get("limit not a number", "/tasks?limit=abc", 400, "invalid_limit"),
    get("limit above 1,000", "/tasks?limit=1001", 400, "invalid_limit"),
    get("limit in exponent form", "/tasks?limit=1e9", 400, "invalid_limit"),
    get("status unknown", "/tasks?status=DONE", 400, "invalid_status"),
    get("status with SQL", "/tasks?status=PENDING'%20OR%20'1'%3D'1", 400, "invalid_status"),
    get("created_after garbage", "/tasks?created_after=yesterday", 400, "invalid_created_after"),
    get(
        "created_after with SQL",
        "/tasks?created_after='%3B%20DROP%20TABLE%20tasks%3B--",
        400,
        "invalid_created_after",
    ),
    get("created_before overflow", "/tasks?created_before=1e30", 400, "invalid_created_before"),
    get("cursor not an id", "/tasks?before=' OR 1=1".replace(" ", "%20"), 400, "invalid_cursor"),
    get("wait negative", "/tasks/{seed}/response?wait=-1", 400, "invalid_wait"),
    get("wait NaN", "/tasks/{seed}/response?wait=NaN", 400, "invalid_wait"),
    get("wait huge", "/tasks/{seed}/response?wait=99999", 400, "invalid_wait"),
    # --- methods, state, auth -----------------------------------------------------------------
    get("PUT /tasks", "/tasks", 405, "method_not_allowed", method="PUT"),
    get("PATCH a task", "/tasks/{seed}", 405, "method_not_allowed", method="PATCH"),
    get("retry a PENDING task", "/tasks/{seed}/retry", 409, None, method="POST"),
    Case(
        "no API key",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        401,
        "unauthorized",
        body=b"x",
        auth=False,
    ),
    Case(
        "API key of 5,000 characters",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        401,
        "unauthorized",
        headers=(("NTQ-API-Key", "ntq_" + "a" * 5000),),
        body=b"x",
        auth=False,
    ),
    Case(
        "API key with SQL",
        "GET",
        "/tasks",
        401,
        "unauthorized",
        headers=(("Authorization", "Bearer ntq_' OR '1'='1"),),
        auth=False,
    ),
]


assert len(CASES) >= 50


def counts(engine: Engine) -> tuple[int, int, int]:
    return count_rows(engine, "tasks"), count_rows(engine, "attempts"), count_rows(engine, "apps")


def send(web: TestApp, key: str, case: Case, seed: str) -> TestResponse:
    headers = dict(case.headers)
    if case.auth:
        headers["Authorization"] = f"Bearer {key}"
    return web.request(
        case.target.replace("{seed}", seed),
        method=case.method,
        headers=headers,
        body=case.body,
        expect_errors=True,
    )


@pytest.fixture
def seed(api: TestApp) -> str:
    """A task every ``{seed}`` row aims at."""
    return enqueued(api, GOOD, b"seed", delay=3600)


def check(reply: TestResponse, case: Case) -> None:
    wanted = case.status if isinstance(case.status, tuple) else (case.status,)
    shown = reply.body[:300]
    assert reply.status_int < 500, f"{case.name}: {reply.status} {shown!r}"
    assert reply.status_int in wanted, (
        f"{case.name}: got {reply.status_int}, want {wanted}: {shown!r}"
    )
    assert reply.headers.get("Content-Type", "").startswith("application/json"), (
        f"{case.name}: not JSON: {reply.headers.get('Content-Type')} {shown!r}"
    )
    error = json.loads(reply.body)["error"]
    assert isinstance(error["code"], str), case.name
    assert error["code"], case.name
    assert isinstance(error["message"], str), case.name
    assert error["message"], case.name
    if case.code:
        assert error["code"] == case.code, f"{case.name}: code {error['code']!r}"
    assert "Location" not in reply.headers, case.name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_a_json_4xx_and_changes_nothing(
    web: TestApp, creds: Credentials, engine: Engine, seed: str, case: Case
) -> None:
    before = counts(engine)
    reply = send(web, creds.api_key, case, seed)
    assert counts(engine) == before, f"{case.name} changed the database: {reply.status}"
    check(reply, case)


def test_the_whole_table_leaves_the_task_count_unchanged(
    web: TestApp, creds: Credentials, engine: Engine, seed: str
) -> None:
    before = counts(engine)
    changed, server_errors = [], []
    for case in CASES:
        at = counts(engine)
        reply = send(web, creds.api_key, case, seed)
        if reply.status_int >= 500:
            server_errors.append((case.name, reply.status_int))
        if counts(engine) != at:
            changed.append((case.name, reply.status_int))
    assert server_errors == []
    assert changed == []
    assert counts(engine) == before
    # The seed task is still there and untouched.
    reply = send(web, creds.api_key, get("seed", "/tasks/{seed}", 200), seed)
    assert reply.status_int == 200
    assert reply.json["status"] == "PENDING"
