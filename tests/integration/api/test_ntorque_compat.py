"""``NTQ_NTORQUE_COMPAT=true``: ``GET /`` answers without a key, as nTorque did; nothing
else does. Deliveries in the nTorque form are in ``tests/acceptance/test_ntorque_compat.py``."""

from __future__ import annotations

import dataclasses

import pytest
from webtest import TestApp

from ntq.config import Settings


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, ntorque_compat=True)


def test_get_root_answers_without_a_key_as_ntorque_did(web: TestApp) -> None:
    response = web.get("/")
    assert response.status_int == 200
    assert response.json["name"] == "ntq"
    # Only the descriptor is open: everything else still wants a key.
    assert web.get("/tasks", expect_errors=True).status_int == 401
