"""Who may do what (SPEC §3, §5; issue 4 items 1 and 4), where it takes real processes:
``ntq apps`` shows a key once and revokes it at once (even on an open keep-alive
connection); applications are isolated on every route, tasks in every state included;
every delivery, retry, callback and cancel notice is signed with the application's secret,
checked with the independent ``standardwebhooks`` verifier. Keys stored as digests, the
key check on every route and per-application idempotency keys are tested in process:
``tests/integration/api/test_auth.py``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid

import pytest
import requests
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.support.hook import HookServer, Received
from tests.support.procs import Api, Stack
from tests.support.tasks import enqueue

BINARY = bytes(range(256)) + b"\xff\xfe\x00\x80 not utf-8"
TEXT = '{"order": 42, "note": "héllo wörld ✓ 😀"}'.encode()


def ntq(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ntq", *argv],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def new_app(engine: Engine, name: str) -> Credentials:
    with engine.begin() as conn:
        return apps.create(conn, name)


def stored_values(engine: Engine) -> list[str]:
    """Every value of every column of the key and application tables, as text."""
    out = []
    with engine.connect() as conn:
        for table in ("api_keys", "apps"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):  # noqa: S608
                out += [str(value) for value in row]
    return out


def assert_error(response: requests.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    if code:
        assert error["code"] == code


# ---------------------------------------------------------------------------------------
# Keys


def test_cli_shows_the_key_once_and_never_again(engine: Engine, stack: Stack, clean: None) -> None:
    stack.web()
    created = ntq(stack, "apps", "create", "cli-app", "--json")
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout.strip().splitlines()[-1])
    key, secret = shown["api_key"], shown["signing_secret"]
    assert shown["name"] == "cli-app"
    assert Api(stack.url, key).get("/").status_code == 200

    listing = ntq(stack, "apps", "list", "--json")
    again = ntq(stack, "apps", "create", "cli-app", "--json")
    assert listing.returncode == 0
    assert again.returncode != 0
    for output in (listing.stdout, listing.stderr, again.stdout, again.stderr):
        assert key not in output
        assert secret not in output
    assert not [v for v in stored_values(engine) if key in v]


def test_revoking_a_key_takes_effect_at_the_very_next_request(
    api: Api, stack: Stack, creds: Credentials, engine: Engine
) -> None:
    with engine.begin() as conn:
        second = apps.add_key(conn, creds.app_id)
    other = Api(stack.url, second)
    task_id = enqueue(api, "http://example.com/hook", delay=3600)
    assert api.get(f"/tasks/{task_id}").status_code == 200  # keep-alive connection open

    revoked = ntq(stack, "apps", "revoke", "--key", creds.api_key)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert_error(api.get(f"/tasks/{task_id}"), 401, "unauthorized")
    assert_error(api.enqueue("http://example.com/hook"), 401, "unauthorized")
    assert other.get(f"/tasks/{task_id}").status_code == 200  # the app's other key lives

    revoked = ntq(stack, "apps", "revoke", "test-app")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert_error(other.get(f"/tasks/{task_id}"), 401, "unauthorized")
    assert_error(other.get("/tasks"), 401, "unauthorized")


# ---------------------------------------------------------------------------------------
# Isolation between applications

TASK_ROUTES = [
    ("GET", "/tasks/{id}"),
    ("GET", "/tasks/{id}/response"),
    ("GET", "/tasks/{id}/response?wait=0.2"),
    ("GET", "/tasks/{id}/attempts"),
    ("DELETE", "/tasks/{id}"),
    ("POST", "/tasks/{id}/retry"),
    ("POST", "/tasks/{id}/push"),
    ("DELETE", "/tasks/{id}/response"),
]


def call(client: Api, method: str, path: str) -> requests.Response:
    return client.http.request(method, client.base + path, timeout=10)


def wait_notice_recorded(api: Api, task_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attempts = api.get(f"/tasks/{task_id}/attempts").json()["attempts"]
        if any(a["outcome"] == "cancel_notice" for a in attempts):
            return
        time.sleep(0.05)
    raise AssertionError(f"no cancel notice recorded for {task_id}")


def test_applications_never_see_each_others_tasks(
    api: Api, stack: Stack, hook: HookServer, engine: Engine
) -> None:
    stack.worker()
    other = new_app(engine, "other-app")
    b = Api(stack.url, other.api_key)
    mine = {
        "COMPLETED": enqueue(api, hook.script("/ok")),
        "FAILED": enqueue(api, hook.script("/gone", {"status": 410})),
        "PENDING": enqueue(api, hook.script("/later"), delay=3600),
    }
    cancelled = enqueue(api, hook.script("/cancelled"), delay=3600, cancel_notice="always")
    assert api.delete(f"/tasks/{cancelled}").status_code == 204
    mine["CANCELLED"] = cancelled
    for status, task_id in mine.items():
        assert api.wait_status(task_id, status)["status"] == status
    wait_notice_recorded(api, cancelled)  # the worker's last write to the cancelled task
    theirs = enqueue(b, hook.script("/theirs"), delay=3600)
    before = {task_id: api.task(task_id) for task_id in mine.values()}
    responses_before = api.get(f"/tasks/{mine['COMPLETED']}/response").json()

    missing = str(uuid.uuid4())
    for method, route in TASK_ROUTES:
        nowhere = call(b, method, route.format(id=missing))
        assert_error(nowhere, 404, "not_found")
        for status, task_id in mine.items():
            response = call(b, method, route.format(id=task_id))
            assert_error(response, 404, "not_found")
            # Indistinguishable from a task that does not exist: no existence oracle.
            assert response.json() == nowhere.json(), (method, route, status)
            assert task_id not in response.text
        assert call(api, method, route.format(id=theirs)).status_code == 404

    # Nothing B did changed A's tasks or their history.
    after = {task_id: api.task(task_id) for task_id in mine.values()}
    assert after == before
    assert api.get(f"/tasks/{mine['COMPLETED']}/response").json() == responses_before

    # Listings, filters and stats show only one's own tasks.
    assert {t["id"] for t in api.get("/tasks").json()["tasks"]} == set(mine.values())
    assert {t["id"] for t in b.get("/tasks").json()["tasks"]} == {theirs}
    for status in ("COMPLETED", "FAILED", "CANCELLED"):
        assert b.get("/tasks", params={"status": status}).json()["tasks"] == []
    assert sum(b.get("/stats").json()["counts"].values()) == 1
    assert sum(api.get("/stats").json()["counts"].values()) == 4

    # B deleting "all" its tasks leaves A's alone.
    assert b.delete("/").status_code == 204
    assert {t["id"] for t in api.get("/tasks").json()["tasks"]} == set(mine.values())
    assert b.get("/tasks").json()["tasks"] == []


# ---------------------------------------------------------------------------------------
# Signed deliveries


def verify(secret: str, received: Received) -> None:
    """Verify with the independent library; it only takes UTF-8 bodies, so a binary body is
    checked with the library's own HMAC primitive over the exact bytes."""
    try:
        received.body.decode("utf-8")
    except UnicodeDecodeError:
        headers = {k.lower(): v for k, v in received.headers.items()}
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode()
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = base64.b64encode(
            hmac.new(key, signed + received.body, hashlib.sha256).digest()
        ).decode()
        given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ")]
        assert expected in given
        return
    Webhook(secret).verify(received.body, received.headers, json_parse=False)


def test_every_delivery_callback_and_notice_is_signed(
    api: Api, stack: Stack, hook: HookServer, creds: Credentials, engine: Engine
) -> None:
    stack.worker()
    flaky = hook.script("/flaky", {"status": 500}, {"status": 200})
    text_id = enqueue(api, flaky, TEXT, callback=hook.script("/callback"))
    binary = api.enqueue(hook.script("/binary"), BINARY, "application/octet-stream")
    assert binary.status_code == 201
    structured = api.post(
        "/tasks",
        json={"url": hook.script("/structured"), "body_base64": base64.b64encode(BINARY).decode()},
    )
    assert structured.status_code == 201
    notice_id = enqueue(
        api,
        hook.script("/notice"),
        delay=3600,
        cancel_notice="always",
        headers={"NTQ-PASSTHROUGH-X-Tenant": "t1"},
    )
    assert api.delete(f"/tasks/{notice_id}").status_code == 204

    attempts = hook.wait_for(2, "/flaky")
    (callback,) = hook.wait_for(1, "/callback")
    (binary_received,) = hook.wait_for(1, "/binary")
    (structured_received,) = hook.wait_for(1, "/structured")
    (notice,) = hook.wait_for(1, "/notice", method="DELETE")
    assert len(attempts) == 2
    assert binary_received.body == BINARY
    assert structured_received.body == BINARY
    assert notice.body == b""

    deliveries = [*attempts, callback, binary_received, structured_received]
    for received in [*deliveries, notice]:
        verify(creds.signing_secret, received)
    for received in deliveries:
        assert received.headers["webhook-id"] == received.headers["NTQ-Task-Id"]
    assert [a.headers["webhook-id"] for a in attempts] == [text_id, text_id]
    assert binary_received.headers["webhook-id"] == binary.json()["id"]
    # The notice is a message of its own: its id is not the deliveries'.
    assert notice.headers["NTQ-Task-Id"] == notice_id
    assert notice.headers["webhook-id"] not in (notice_id, "", "None")
    assert json.loads(callback.body)["task"]["id"] == text_id

    # Tampering with the body, or another application's secret, fails verification.
    other = new_app(engine, "other-app")
    for received in (attempts[1], callback, notice):
        with pytest.raises(WebhookVerificationError):
            Webhook(other.signing_secret).verify(received.body, received.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(creds.signing_secret).verify(received.body + b" ", received.headers)
    with pytest.raises(AssertionError):
        verify(
            creds.signing_secret,
            Received(
                binary_received.method,
                binary_received.path,
                binary_received.headers,
                BINARY[:-1] + b"\x81",
                0.0,
            ),
        )


def test_a_client_cannot_forge_or_override_the_signature_headers(
    api: Api, stack: Stack, hook: HookServer, creds: Credentials
) -> None:
    stack.worker()
    forged = {
        "NTQ-PASSTHROUGH-webhook-signature": "v1,forged",
        "NTQ-PASSTHROUGH-webhook-id": "other",
        "NTQ-PASSTHROUGH-webhook-timestamp": "1",
    }
    for name, value in forged.items():
        response = api.enqueue(hook.script("/forged"), b"x", headers={name: value})
        assert_error(response, 400)
    for name in ("webhook-signature", "webhook-id", "webhook-timestamp", "NTQ-Task-Id"):
        response = api.post(
            "/tasks", json={"url": hook.script("/forged"), "headers": {name: "forged"}}
        )
        assert_error(response, 400)
    task_id = enqueue(api, hook.script("/genuine"), TEXT)
    (received,) = hook.wait_for(1, "/genuine")
    verify(creds.signing_secret, received)
    assert received.headers["webhook-id"] == task_id
    assert hook.requests("/forged") == []
