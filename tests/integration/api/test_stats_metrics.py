"""``GET /stats`` needs an API key; ``GET /metrics`` does not (SPEC §3). What they report
after real deliveries is in ``tests/acceptance/test_stats_metrics.py``."""

from __future__ import annotations

from webtest import TestApp


def test_stats_needs_an_api_key_and_metrics_does_not(api: TestApp, web: TestApp) -> None:
    assert web.get("/metrics").status_int == 200
    for headers in ({}, {"Authorization": "Bearer ntq_wrong"}, {"NTQ-API-Key": "nope"}):
        response = web.get("/stats", headers=headers, expect_errors=True)
        assert response.status_int == 401, (headers, response.text)
        assert response.json["error"]["code"]
    assert api.get("/stats").status_int == 200
