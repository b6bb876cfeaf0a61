"""Secrets stay secret (SPEC §5, issue 4 item 5): a full run — deliveries, failures,
retries, a replay, a cancellation, callbacks, rejected requests — logs no body, no
pass-through header value, no API key and no signing secret. HSTS and
``X-Forwarded-Proto`` are tested in process: ``tests/integration/api/test_secrecy.py``."""

from __future__ import annotations

import base64
import json
import socket
import uuid

import requests
from sqlalchemy import Engine

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.support.hook import HookServer
from tests.support.procs import Api, Stack, free_port
from tests.support.tasks import enqueue, finished


def marker(kind: str) -> str:
    return f"{kind}-marker-{uuid.uuid4().hex}"


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_full_run_logs_no_body_header_value_key_or_secret(
    api: Api, stack: Stack, hook: HookServer, creds: Credentials, engine: Engine
) -> None:
    stack.worker()
    stack.requeue()
    body, header, response_body, json_secret = (
        marker("body"),
        marker("header"),
        marker("response"),
        marker("json"),
    )
    wrong_key = "ntq_" + marker("wrongkey")
    with engine.begin() as conn:
        second_key = apps.add_key(conn, creds.app_id)
    sensitive = [header, "X-Tenant-Token"]
    passthrough = {"NTQ-PASSTHROUGH-X-Tenant-Token": header}

    # Delivered at once; its hook answers with a body of its own; a callback follows.
    ok = hook.script("/ok", {"status": 200, "body": response_body})
    delivered = enqueue(
        api, ok, body.encode(), headers=passthrough, callback=hook.script("/callback")
    )
    # Fails for good (400), then is replayed and succeeds.
    failing = hook.script("/fails-then-ok", {"status": 400, "body": response_body}, {"status": 200})
    replayed = enqueue(api, failing, body.encode(), headers=passthrough)
    # Transient trouble: retried with backoff (worker and requeue both involved).
    flaky = hook.script("/flaky", {"status": 503, "body": response_body}, {"status": 200})
    retried = enqueue(api, flaky, body.encode(), headers=passthrough, max_retries=3)
    # Cancelled before it runs: the hook gets the DELETE notice (asked for) with the headers.
    cancelled = enqueue(
        api,
        hook.script("/cancel"),
        body.encode(),
        headers=passthrough,
        delay=3600,
        callback=hook.script("/cancel-callback"),
        cancel_notice="always",
    )
    assert api.delete(f"/tasks/{cancelled}").status_code == 204
    # The structured form with a JSON body and headers; and one with the second key.
    structured = api.post(
        "/tasks",
        json={
            "url": hook.script("/structured"),
            "json": {"secret": json_secret},
            "headers": {"X-Tenant-Token": header},
        },
    )
    assert structured.status_code == 201, structured.text
    other_client = Api(stack.url, second_key)
    with_second_key = enqueue(other_client, hook.script("/second"), body.encode())
    # Rejected requests that carry secrets.
    assert (
        requests.get(
            stack.url + "/tasks", timeout=10, headers={"Authorization": f"Bearer {wrong_key}"}
        ).status_code
        == 401
    )
    assert api.enqueue("javascript:" + body, body.encode()).status_code == 400
    assert (
        api.post("/tasks", data=body, headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    garbled = (
        f"POST /?url=http://example.com/ HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {creds.api_key}\r\nConnection: close\r\n"
        f"NTQ-PASSTHROUGH-X-Tenant-Token: {header}\x00\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    assert b" 400 " in raw_request(stack.port, garbled).split(b"\r\n")[0]

    finished(api, delivered, "COMPLETED")
    finished(api, replayed, "FAILED")
    assert api.post(f"/tasks/{replayed}/retry").status_code == 200
    finished(api, replayed, "COMPLETED")
    finished(api, retried, "COMPLETED")
    finished(api, structured.json()["id"], "COMPLETED")
    finished(other_client, with_second_key, "COMPLETED")
    hook.wait_for(1, "/callback")
    hook.wait_for(1, "/cancel", method="DELETE")
    hook.wait_for(1, "/cancel-callback")
    assert api.get(f"/tasks/{delivered}/response").json()["body"] == response_body
    signatures = [r.headers["webhook-signature"] for r in hook.requests()]
    assert len(signatures) >= 10
    stack.stop()  # every process flushes and logs its shutdown too

    logs = stack.logs()
    # The run was logged (so the search below means something) ...
    assert "worker.attempt" in logs
    assert delivered in logs
    # ... and nothing secret was.
    secret_part = creds.signing_secret.removeprefix("whsec_")
    forbidden = {
        "body marker": body,
        "pass-through header value": header,
        "hook response body": response_body,
        "JSON body": json_secret,
        "API key": creds.api_key,
        "API key (random part)": creds.api_key[len("ntq_") :],
        "second API key": second_key,
        "wrong API key": wrong_key,
        "signing secret": creds.signing_secret,
        "signing secret (base64)": secret_part,
        "signing secret (hex)": base64.b64decode(secret_part).hex(),
    }
    forbidden.update(
        {f"webhook signature {i}": s.split(",", 1)[1] for i, s in enumerate(signatures)}
    )
    leaked = [name for name, value in forbidden.items() if value in logs]
    assert leaked == [], f"leaked into the logs: {leaked}"
    # Lines are valid JSON (NTQ_LOG_FORMAT=json): a multi-line dump would be a smell.
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)
    assert sensitive  # the pass-through header *name* may be logged; its value may not


def test_credentials_in_webhook_urls_are_not_logged(api: Api, stack: Stack) -> None:
    """Webhook URLs often carry a token (``?token=``, Slack-style paths, user:password);
    a failed connection must not copy it into the logs."""
    stack.worker()
    token, password = marker("urltoken"), marker("password")
    closed = free_port()  # nothing listens: the attempt fails with a connection error
    task_id = enqueue(
        api, f"http://user:{password}@127.0.0.1:{closed}/hook?token={token}", b"x", max_retries=0
    )
    task = finished(api, task_id, "FAILED")
    assert task["last_error"]
    stack.stop()
    logs = stack.logs()
    assert task_id in logs  # the attempt was logged
    leaked = [
        name
        for name, value in {"query token": token, "password": password}.items()
        if value in logs
    ]
    assert leaked == [], f"leaked into the logs: {leaked}"
