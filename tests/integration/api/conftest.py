"""The HTTP API in process: ``make_app(settings)`` on the migrated test database and the test
Redis, driven through WebTest. Each test starts from empty tables and Redis, with the
application ``creds`` (``tests/conftest.py``) and ``api``, a client authenticated as it.
Every response is held to the app's own OpenAPI document (``tests/support/openapi.py``).

A module that needs other settings overrides ``api_settings``; each distinct ``Settings``
gets one app for the whole session, so its connection pools are made once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from webtest import TestApp

from ntq.config import Settings
from ntq.store import apps
from ntq.store.apps import Credentials
from ntq.web.app import make_app
from ntq.web.services import of
from tests.support.openapi import CheckedApp

HOST = "127.0.0.1:8080"  # what links and ``Location`` are built from
Client = Callable[[str | None], TestApp]


@pytest.fixture(scope="session")
def wsgi_apps(migrated: str) -> Iterator[dict[Settings, tuple[Any, dict[str, Any]]]]:
    """Settings -> the app built for them and its OpenAPI document, for the session (closed
    before the test database goes)."""
    built: dict[Settings, tuple[Any, dict[str, Any]]] = {}
    yield built
    for app, _ in built.values():
        of(app.registry).close()


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """The settings the app under test runs with (a module overrides this)."""
    return settings


@pytest.fixture
def client(api_settings: Settings, wsgi_apps: dict[Settings, tuple[Any, dict[str, Any]]]) -> Client:
    """A new WebTest client of the app, presenting ``key`` as a bearer token (or nothing)."""
    if api_settings not in wsgi_apps:
        app = make_app(api_settings)
        wsgi_apps[api_settings] = app, TestApp(app).get("/openapi.json").json
    app, document = wsgi_apps[api_settings]

    def new(key: str | None) -> TestApp:
        test_app = CheckedApp(app, document, extra_environ={"HTTP_HOST": HOST})
        if key is not None:
            test_app.authorization = ("Bearer", key)
        return test_app

    return new


@pytest.fixture
def web(client: Client) -> TestApp:
    """A client without an API key."""
    return client(None)


@pytest.fixture
def api(client: Client, creds: Credentials) -> TestApp:
    """A client authenticated as the test application."""
    return client(creds.api_key)


@pytest.fixture
def new_app(engine: Engine, clean: None) -> Callable[[str], Credentials]:
    """Another application, by name."""

    def create(name: str) -> Credentials:
        with engine.begin() as conn:
            return apps.create(conn, name)

    return create


def count_rows(engine: Engine, table: str = "tasks") -> int:
    """How many rows ``table`` holds, over every application."""
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
