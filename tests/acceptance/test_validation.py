"""What of input validation only the web server decides (SPEC §3, §5): a chunked body over
the limit is refused while it is read, and nTorque's ``NTORQUE_API_KEY`` header, with its
underscore, reaches ntq. The rest of validation runs in process:
``tests/integration/api/test_validation.py``.

One web process serves the whole module (no worker: tasks stay where they are stored),
with a small NTQ_MAX_BODY_BYTES so the 413 needs no megabytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import Engine, text

from ntq.store import apps
from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.procs import Stack

BODY_LIMIT = 4096
HOOK = "https://example.com/hook"

stack = module_stack(worker=False, NTQ_MAX_BODY_BYTES=str(BODY_LIMIT))


@pytest.fixture(scope="module")
def mine(stack: Stack, engine: Engine) -> Credentials:
    with engine.begin() as conn:
        return apps.create(conn, "validation-app")


def count(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text("SELECT count(*) FROM tasks")).scalar_one())


def test_chunked_body_over_the_limit_is_413_and_stores_nothing(
    stack: Stack, mine: Credentials, engine: Engine
) -> None:
    """No Content-Length to trust: the limit holds while reading."""
    before = count(engine)
    chunks: Iterator[bytes] = (b"x" * 1024 for _ in range(BODY_LIMIT // 1024 + 2))
    response = requests.post(
        stack.url + "/",
        params={"url": HOOK},
        data=chunks,
        timeout=10,
        headers={
            "Authorization": f"Bearer {mine.api_key}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"]
    assert error["message"]
    assert count(engine) == before, "a refused request stored a task"


def test_the_ntorque_key_header_with_an_underscore_authenticates(
    stack: Stack, mine: Credentials, engine: Engine
) -> None:
    """nTorque's client sends NTORQUE_API_KEY with an underscore, which servers often drop."""
    headers = {"NTORQUE_API_KEY": mine.api_key}
    before = count(engine)
    response = requests.post(stack.url + "/", params={"url": HOOK}, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["app"] == mine.name
    assert count(engine) == before + 1
    task_url = response.headers["Location"]
    assert requests.get(task_url, headers=headers, timeout=10).status_code == 200
