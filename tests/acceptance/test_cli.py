"""``ntq apps`` manages the applications the API authenticates (SPEC §6), every command
refuses a bad setting by name (SPEC §7), and what the commands log follows the log format."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psutil
import pytest
from sqlalchemy import Engine, text

from tests.support.procs import Api, Stack, wait_log

HOOK = "https://example.com/hook"


def ntq(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ntq`` command against the test database and Redis."""
    return subprocess.run(
        [sys.executable, "-m", "ntq", *args],
        env={**stack.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def last_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, result.stderr
    return json.loads(lines[-1])


def create(stack: Stack, name: str) -> dict[str, Any]:
    created: dict[str, Any] = last_json(ntq(stack, "apps", "create", name, "--json"))
    return created


def listed(stack: Stack) -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in last_json(ntq(stack, "apps", "list", "--json"))}


def test_create_list_and_revoke_an_application(stack: Stack) -> None:
    billing = create(stack, "billing")
    mailer = create(stack, "mailer")
    assert billing["name"] == "billing"
    assert billing["api_key"]
    assert billing["signing_secret"]
    assert billing["api_key"] != mailer["api_key"]
    assert billing["signing_secret"] != mailer["signing_secret"]
    apps = listed(stack)
    assert set(apps) >= {"billing", "mailer"}
    assert not apps["billing"].get("revoked")
    assert billing["api_key"] not in json.dumps(apps)  # keys are shown only once

    stack.web()
    as_billing = Api(stack.url, billing["api_key"])
    as_mailer = Api(stack.url, mailer["api_key"])
    enqueued = as_billing.enqueue(HOOK)
    assert enqueued.status_code == 201, enqueued.text
    assert enqueued.json()["app"] == "billing"

    revoked = ntq(stack, "apps", "revoke", "billing")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert as_billing.enqueue(HOOK).status_code == 401
    assert as_billing.get(f"/tasks/{enqueued.json()['id']}").status_code == 401
    assert as_mailer.enqueue(HOOK).status_code == 201  # only the revoked one is locked out
    assert listed(stack)["billing"].get("revoked")
    assert not listed(stack)["mailer"].get("revoked")
    for client in (as_billing, as_mailer):
        client.http.close()


def test_keys_are_listed_by_prefix_and_revoked_by_it(stack: Stack) -> None:
    """The whole key is shown once; the prefix ``keys`` lists is enough to revoke it."""
    first = create(stack, "shop")["api_key"]
    second = last_json(ntq(stack, "apps", "add-key", "shop", "--json"))["api_key"]
    keys = last_json(ntq(stack, "apps", "keys", "shop", "--json"))
    assert [k["prefix"] for k in keys] == [first[:12], second[:12]]
    assert all(k["revoked"] is None and k["created"] for k in keys)
    assert first not in json.dumps(keys)
    assert second not in json.dumps(keys)
    shown = ntq(stack, "apps", "keys", "shop")
    assert f"{first[:12]}...\t" in shown.stdout
    assert "active" in shown.stdout

    stack.web()
    as_first, as_second = Api(stack.url, first), Api(stack.url, second)
    revoked = ntq(stack, "apps", "revoke", "--key", f"{first[:12]}...")  # as listed
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert as_first.enqueue(HOOK).status_code == 401
    assert as_second.enqueue(HOOK).status_code == 201
    keys = last_json(ntq(stack, "apps", "keys", "shop", "--json"))
    assert [k["revoked"] is not None for k in keys] == [True, False]

    again = ntq(stack, "apps", "revoke", "--key", first[:12])  # already revoked
    assert again.returncode == 1
    assert "no such active key" in again.stdout
    assert ntq(stack, "apps", "revoke", "--key", "ntq_nothing").returncode == 1
    assert ntq(stack, "apps", "keys", "nobody").returncode == 1
    for client in (as_first, as_second):
        client.http.close()


def test_a_prefix_naming_several_active_keys_revokes_none(stack: Stack, engine: Engine) -> None:
    create(stack, "twins")
    ntq(stack, "apps", "add-key", "twins")
    with engine.begin() as conn:  # 48 random bits make this rare; make it happen
        conn.execute(
            text(
                "UPDATE api_keys SET prefix = 'ntq_SAMEPFX1' WHERE app_id = "
                "(SELECT id FROM apps WHERE name = 'twins')"
            )
        )
    result = ntq(stack, "apps", "revoke", "--key", "ntq_SAMEPFX1")
    assert result.returncode == 1
    assert "2 active keys start with" in result.stdout
    keys = last_json(ntq(stack, "apps", "keys", "twins", "--json"))
    assert all(k["revoked"] is None for k in keys)


def test_create_refuses_a_duplicate_name(stack: Stack) -> None:
    first = create(stack, "twice")
    again = ntq(stack, "apps", "create", "twice", "--json")
    assert again.returncode != 0
    assert first["api_key"] not in again.stdout + again.stderr
    assert list(listed(stack)).count("twice") == 1


def test_revoking_an_unknown_application_fails(stack: Stack) -> None:
    result = ntq(stack, "apps", "revoke", "nobody")
    assert result.returncode != 0


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (("apps", "list"), "NTQ_MAX_RETRIES", "lots"),
        (("worker",), "NTQ_WORKER_CONCURRENCY", "many"),
        (("requeue",), "NTQ_REQUEUE_INTERVAL", "often"),
        (("web",), "PORT", "http"),
    ],
)
def test_a_bad_setting_stops_the_command_naming_the_variable(
    stack: Stack, command: tuple[str, ...], variable: str, value: str
) -> None:
    result = ntq(stack, *command, **{variable: value})
    assert result.returncode not in (0, None)
    assert variable in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_the_web_servers_own_messages_are_json_lines_too(stack: Stack) -> None:
    """gunicorn's messages (here: its master reports a worker killed) come out like ntq's
    events under NTQ_LOG_FORMAT=json, not in gunicorn's own format."""
    web = stack.web()
    assert web.popen is not None
    (worker,) = psutil.Process(web.popen.pid).children()
    worker.kill()
    wait_log(web, "was sent SIGKILL")
    lines = [line for line in web.output().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is a JSON object
    assert any(
        "was sent SIGKILL" in event["event"] and event["logger"] == "gunicorn.error"
        for event in events
    ), lines
    assert {"level", "timestamp"} <= set(events[0])
