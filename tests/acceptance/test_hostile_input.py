"""Hostile and malformed requests that only a real web server sees (SPEC §3, §5; issue 4
item 3): broken chunked framing, a ``Content-Length`` that lies, bytes a header parser must
refuse, a request head over gunicorn's limits, a key refused before a large body arrives.

Each row of the table is sent as raw bytes over a socket to a real ``ntq web`` (so header
injection, broken framing and odd bytes reach the server exactly as written). Every one must
get the right 4xx status with a JSON ``{"error": {"code", "message"}}`` body — never a 500,
never HTML — and none may create a task. The rows a WSGI server passes on as they are (URLs,
numbers, pass-through headers, JSON, ids, filters, methods, keys) run in process:
``tests/integration/api/test_hostile_input.py``.
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import Engine, text

from ntq.store import apps
from tests.conftest import module_stack
from tests.support.procs import Api, Stack

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
    raw_headers: bytes = b""  # appended verbatim to the header block
    auth: bool = True
    content_length: str | None = None  # None: the body's real length
    chunked: bool = False
    framing: bytes | None = None  # sent verbatim as a chunked body (malformed framing)


def enq(
    name: str,
    status: int | tuple[int, ...],
    code: str | None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    raw_headers: bytes = b"",
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
        raw_headers=raw_headers,
    )


def get(
    name: str,
    path: str,
    status: int | tuple[int, ...],
    code: str | None = None,
    method: str = "GET",
) -> Case:
    return Case(name, method, path, status, code)


CASES: list[Case] = [
    Case(
        "unknown key, large batch announced",
        "POST",
        "/tasks",
        401,
        "unauthorized",
        auth=False,
        body=b"[",
        content_length="10000000",
        headers=(("Authorization", "Bearer ntq_notakey"), ("Content-Type", "application/json")),
    ),
    Case(
        "unknown key, large task announced",
        "POST",
        "/?url=http%3A%2F%2Fexample.com%2F",
        401,
        "unauthorized",
        auth=False,
        body=b"x",
        content_length="1000000",
        headers=(("Authorization", "Bearer ntq_notakey"), ("Content-Type", "text/plain")),
    ),
    enq(
        "pass-through value with bare CR",
        400,
        None,
        raw_headers=b"NTQ-PASSTHROUGH-X-A: a\rInjected: 1\r\n",
    ),
    enq(
        "pass-through value with obs-fold",
        400,
        None,
        raw_headers=b"NTQ-PASSTHROUGH-X-A: a\r\n Injected: 1\r\n",
    ),
    enq(
        "pass-through value with NUL",
        400,
        None,
        raw_headers=b"NTQ-PASSTHROUGH-X-A: a\x00Injected: 1\r\n",
    ),
    Case(
        "chunked body over 1 MiB",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        413,
        "body_too_large",
        body=b"x" * (MiB + 1),
        chunked=True,
    ),
    Case(
        "chunk size that is not hex",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        400,
        "invalid_framing",
        framing=b"zz\r\npayload\r\n0\r\n\r\n",
    ),
    Case(
        "chunk without its terminating CRLF",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        400,
        "invalid_framing",
        framing=b"7\r\npayloadXX0\r\n\r\n",
    ),
    Case(
        "Content-Length claims a terabyte",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        413,
        "body_too_large",
        body=b"x",
        content_length=str(10**12),
    ),
    Case(
        "negative Content-Length",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        400,
        body=b"x",
        content_length="-1",
    ),
    Case(
        "non-numeric Content-Length",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        400,
        body=b"x",
        content_length="12abc",
    ),
    Case(
        "Content-Length and Transfer-Encoding (smuggling)",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        400,
        body=b"x",
        raw_headers=b"Transfer-Encoding: chunked\r\n",
    ),
    Case(
        "one 20 KB header",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        (400, 431),
        headers=(("X-Big", "a" * 20_000),),
        body=b"x",
    ),
    Case(
        "150 headers",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        (400, 431),
        headers=tuple((f"X-H{i}", "v") for i in range(150)),
        body=b"x",
    ),
    Case(
        "request line of 10 KB",
        "POST",
        "/?" + urlencode({"url": GOOD + "?" + "a" * 10_000}),
        (400, 414),
        body=b"x",
    ),
    Case(
        "raw header name with a space",
        "POST",
        "/?" + urlencode({"url": GOOD}),
        400,
        raw_headers=b"Bad Name: x\r\n",
        body=b"x",
    ),
]


# ---------------------------------------------------------------------------------------
# Sending raw requests


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def encode_chunked(body: bytes) -> bytes:
    out = b""
    for start in range(0, len(body), 65536):
        piece = body[start : start + 65536]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def send(port: int, key: str, case: Case, seed: str) -> Reply:
    target = case.target.replace("{seed}", seed)
    lines = [
        f"{case.method} {target} HTTP/1.1".encode(),
        f"Host: 127.0.0.1:{port}".encode(),
        b"Connection: close",
    ]
    if case.auth:
        lines.append(f"Authorization: Bearer {key}".encode())
    lines += [f"{name}: {value}".encode() for name, value in case.headers]
    body = case.body
    if case.chunked or case.framing is not None:
        lines.append(b"Transfer-Encoding: chunked")
        body = encode_chunked(body) if case.framing is None else case.framing
    elif case.content_length is not None:
        lines.append(f"Content-Length: {case.content_length}".encode())
    elif body or case.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}".encode())
    request = b"\r\n".join(lines) + b"\r\n" + case.raw_headers + b"\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # The server may answer (and close) before reading everything we send.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    return parse(data)


def parse(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise AssertionError("no response at all (connection closed)")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = decode_chunked(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Reply(int(status_line.split()[1]), headers, body)


def decode_chunked(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


# ---------------------------------------------------------------------------------------
# The server under attack: one web process for the whole table


@dataclass
class Target:
    port: int
    key: str
    seed: str
    engine: Engine

    def counts(self) -> tuple[int, int, int]:
        with self.engine.connect() as conn:
            return (
                conn.execute(text("SELECT count(*) FROM tasks")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM attempts")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM apps")).scalar_one(),
            )


stack = module_stack(worker=False)


@pytest.fixture(scope="module")
def target(stack: Stack, engine: Engine) -> Target:
    with engine.begin() as conn:
        creds = apps.create(conn, "hostile")
    client = Api(stack.url, creds.api_key)
    seed = client.enqueue(GOOD, b"seed", delay=3600)
    assert seed.status_code == 201, seed.text
    client.http.close()
    return Target(stack.port, creds.api_key, seed.json()["id"], engine)


def check(reply: Reply, case: Case) -> None:
    wanted = case.status if isinstance(case.status, tuple) else (case.status,)
    shown = reply.body[:300]
    assert reply.status < 500, f"{case.name}: {reply.status} {shown!r}"
    assert reply.status in wanted, f"{case.name}: got {reply.status}, want {wanted}: {shown!r}"
    assert reply.headers.get("content-type", "").startswith("application/json"), (
        f"{case.name}: not JSON: {reply.headers.get('content-type')} {shown!r}"
    )
    error = json.loads(reply.body)["error"]
    assert isinstance(error["code"], str), case.name
    assert error["code"], case.name
    assert isinstance(error["message"], str), case.name
    assert error["message"], case.name
    if case.code:
        assert error["code"] == case.code, f"{case.name}: code {error['code']!r}"
    assert "location" not in reply.headers, case.name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_a_json_4xx_and_changes_nothing(target: Target, case: Case) -> None:
    before = target.counts()
    reply = send(target.port, target.key, case, target.seed)
    assert target.counts() == before, f"{case.name} changed the database: {reply.status}"
    check(reply, case)


def test_the_whole_table_leaves_the_task_count_unchanged(target: Target) -> None:
    before = target.counts()
    changed, server_errors = [], []
    for case in CASES:
        at = target.counts()
        reply = send(target.port, target.key, case, target.seed)
        if reply.status >= 500:
            server_errors.append((case.name, reply.status))
        if target.counts() != at:
            changed.append((case.name, reply.status))
    assert server_errors == []
    assert changed == []
    assert target.counts() == before
    # The seed task is still there and untouched.
    seed = send(target.port, target.key, get("seed", "/tasks/{seed}", 200), target.seed)
    assert seed.status == 200
    assert json.loads(seed.body)["status"] == "PENDING"
