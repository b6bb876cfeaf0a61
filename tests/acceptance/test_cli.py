"""``ntq apps`` manages the applications the API authenticates (SPEC §6), and every
command refuses a bad setting by name (SPEC §7)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.procs import Api, Stack

HOOK = "https://example.com/hook"


def ntq(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ntq`` command against the test database and Redis."""
    return subprocess.run([sys.executable, "-m", "ntq", *args], env={**stack.env, **env},
                           capture_output=True, text=True, timeout=60, check=False)


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


def test_create_refuses_a_duplicate_name(stack: Stack) -> None:
    first = create(stack, "twice")
    again = ntq(stack, "apps", "create", "twice", "--json")
    assert again.returncode != 0
    assert first["api_key"] not in again.stdout + again.stderr
    assert list(listed(stack)).count("twice") == 1


def test_revoking_an_unknown_application_fails(stack: Stack) -> None:
    result = ntq(stack, "apps", "revoke", "nobody")
    assert result.returncode != 0


@pytest.mark.parametrize(("command", "variable", "value"), [
    (("apps", "list"), "NTQ_MAX_RETRIES", "lots"),
    (("worker",), "NTQ_WORKER_CONCURRENCY", "many"),
    (("requeue",), "NTQ_REQUEUE_INTERVAL", "often"),
    (("web",), "PORT", "http"),
])
def test_a_bad_setting_stops_the_command_naming_the_variable(
        stack: Stack, command: tuple[str, ...], variable: str, value: str) -> None:
    result = ntq(stack, *command, **{variable: value})
    assert result.returncode not in (0, None)
    assert variable in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
