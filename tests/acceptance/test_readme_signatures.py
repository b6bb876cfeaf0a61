"""The README's signature examples, run as written against real deliveries of every kind:
empty, text, JSON and binary bodies, and the ``DELETE`` notice of a cancelled task."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.hook import HookServer, Received
from tests.support.procs import Api

stack = module_stack()

README = Path(__file__).resolve().parents[2] / "README.md"
Verify = Callable[[str, bytes, dict[str, str]], None]


def readme_examples() -> dict[str, Any]:
    """What the Python blocks of the README's "What your webhook receives" define."""
    text = README.read_text()
    section = text[text.index("## What your webhook receives") :]
    section = section[: section.index("\n## ", 1)]
    namespace: dict[str, Any] = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102  (our own README)
    return namespace


EXAMPLES = readme_examples()
verify: Verify = EXAMPLES["verify"]
verify_bytes: Verify = EXAMPLES["verify_bytes"]

BODIES = {
    "empty": (b"", None),
    "text": ("héllo wörld ✓".encode(), "text/plain; charset=utf-8"),
    "json": (b'{"order": 42, "items": ["a", "b"]}', "application/json"),
    "binary": (bytes(range(256)) + b"\xff\xfe\x00", "application/octet-stream"),
}


def delivered(api: Api, hook: HookServer, kind: str) -> Received:
    body, content_type = BODIES[kind]
    response = api.enqueue(hook.script(f"/{kind}"), body, content_type)
    assert response.status_code == 201, response.text
    (received,) = hook.wait_for(1, f"/{kind}")
    assert received.body == body
    return received


def cancel_notice(api: Api, hook: HookServer) -> Received:
    """The DELETE ntq sends a hook whose attempt was under way when the task was cancelled."""
    url = hook.script("/slow", {"status": 200, "sleep": 30})
    response = api.enqueue(url, b"work", "text/plain")
    assert response.status_code == 201, response.text
    hook.wait_for(1, "/slow", method="POST")
    assert api.delete(f"/tasks/{response.json()['id']}").status_code == 204
    (notice,) = hook.wait_for(1, "/slow", method="DELETE")
    return notice


@pytest.mark.parametrize("kind", ["empty", "text", "json"])
def test_both_examples_verify_text_deliveries(
    app: tuple[Api, Credentials], hook: HookServer, kind: str
) -> None:
    api, creds = app
    received = delivered(api, hook, kind)
    verify(creds.signing_secret, received.body, received.headers)
    verify_bytes(creds.signing_secret, received.body, received.headers)


def test_both_examples_verify_the_cancel_notice(
    app: tuple[Api, Credentials], hook: HookServer
) -> None:
    api, creds = app
    notice = cancel_notice(api, hook)
    assert notice.body == b""
    verify(creds.signing_secret, notice.body, notice.headers)
    verify_bytes(creds.signing_secret, notice.body, notice.headers)


def test_only_the_raw_bytes_example_verifies_a_binary_body(
    app: tuple[Api, Credentials], hook: HookServer
) -> None:
    """What the README says plainly: the library decodes the body as UTF-8 first."""
    api, creds = app
    received = delivered(api, hook, "binary")
    verify_bytes(creds.signing_secret, received.body, received.headers)
    with pytest.raises(UnicodeDecodeError):
        verify(creds.signing_secret, received.body, received.headers)


def test_both_examples_refuse_forged_and_stale_messages(
    app: tuple[Api, Credentials], hook: HookServer
) -> None:
    api, creds = app
    received = delivered(api, hook, "json")
    other_secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    stale = {**received.headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    for check in (verify, verify_bytes):
        with pytest.raises(Exception):  # noqa: B017, PT011  (each library raises its own)
            check(creds.signing_secret, received.body + b" ", received.headers)
        with pytest.raises(Exception):  # noqa: B017, PT011
            check(other_secret, received.body, received.headers)
        with pytest.raises(Exception):  # noqa: B017, PT011
            check(creds.signing_secret, received.body, stale)
