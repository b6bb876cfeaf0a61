"""A request that can never be sent (issue 10 item 10): a task that reaches a worker anyway
(stored before the rule existed, or led there by a redirect) ends FAILED with the error
recorded, instead of staying PENDING while each expired lease brings it back. That the API
refuses such tasks with a 400 naming the field is tested in process:
``tests/integration/api/test_unsendable.py``."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from ntq.records import NewTask
from ntq.store.apps import Credentials
from ntq.store.enqueue import insert_task
from tests.conftest import module_stack
from tests.support.hook import HookServer
from tests.support.procs import Api
from tests.support.tasks import attempts, enqueue, finished

# The requeue poller finds the tasks this module writes straight into the database.
stack = module_stack(requeue=True)


def stored(engine: Engine, creds: Credentials, new: NewTask) -> str:
    """A task written straight into the database: what the API now refuses, as a task stored
    before the rule existed would be."""
    with engine.begin() as conn:
        task, _ = insert_task(conn, new, creds.app_id)
    return str(task.id)


def assert_failed_at_once(api: Api, task_id: str, *words: str) -> None:
    task = finished(api, task_id, timeout=20)
    assert (task["status"], task["retry_count"]) == ("FAILED", 1), task
    (attempt,) = attempts(api, task_id)
    assert attempt["outcome"] == "fail", attempt
    assert attempt["status_code"] is None
    for word in words:
        assert word in attempt["error"], attempt
        assert word in task["last_error"], task


@pytest.mark.parametrize(
    ("new", "words"),
    [
        ({"headers": {"X-Name": "日本"}}, ("latin-1",)),
        ({"content_type": "text/plain; x=日本"}, ("latin-1",)),
        ({"headers": {"X-Name": " leading space"}}, ("InvalidHeader",)),
        ({"host": "a..example.com"}, ("label",)),
    ],
    ids=["header value", "content type", "leading space", "host label"],
)
def test_a_stored_unsendable_task_fails_with_the_error_recorded(
    app: tuple[Api, Credentials],
    engine: Engine,
    hook: HookServer,
    new: dict[str, Any],
    words: tuple[str, ...],
) -> None:
    api, creds = app
    url = hook.script("/unsendable").replace("127.0.0.1", new.get("host", "127.0.0.1"))
    fields = {name: value for name, value in new.items() if name != "host"}
    task_id = stored(engine, creds, NewTask(url=url, body=b"x", max_retries=5, **fields))
    assert_failed_at_once(api, task_id, *words)
    assert hook.requests("/unsendable") == []


def test_a_redirect_to_an_unusable_host_fails_with_the_error_recorded(
    app: tuple[Api, Credentials], hook: HookServer
) -> None:
    api, _ = app
    url = hook.script("/moved", {"status": 302, "headers": {"Location": "http://a..example.com/x"}})
    task_id = enqueue(api, url, max_retries=5)
    assert_failed_at_once(api, task_id, "label")
    assert len(hook.requests("/moved")) == 1
