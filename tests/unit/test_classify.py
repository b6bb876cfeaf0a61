"""The outcome rules of SPEC §4: what one attempt's result means for the task."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ntq.config import Settings, load_settings
from ntq.delivery import classify
from ntq.records import Acquired, AttemptResult, Status

SETTINGS = load_settings({}, min_due_delay=2.0, max_due_delay=100.0)


def task(attempt: int = 1, max_retries: int = 36, backoff: str = "exponential") -> Acquired:
    """A delivery attempt held by a worker (``attempt`` is its 1-based number)."""
    return Acquired(
        id=uuid.uuid4(),
        attempt_id=uuid.uuid4(),
        app_id=None,
        url="https://example.com/hook",
        method="POST",
        headers={},
        body=b"",
        content_type=None,
        timeout=60,
        retry_count=attempt,
        max_retries=max_retries,
        backoff=backoff,
        callback=None,
        status=Status.PENDING,
        secret="s",
    )


def answer(
    code: int | None, error: str | None = None, retry_after: float | None = None
) -> AttemptResult:
    return AttemptResult(
        method="POST",
        started=datetime.now(UTC),
        elapsed_ms=5,
        status_code=code,
        reason=None if code is None else "Reason",
        error=error,
        retry_after=retry_after,
    )


def outcome(
    result: AttemptResult, held: Acquired | None = None, settings: Settings = SETTINGS
) -> str:
    return classify(held or task(), result, settings).decision


@pytest.mark.parametrize("code", [200, 201, 202, 204, 206, 299])
def test_any_2xx_completes(code: int) -> None:
    """nTorque counted 202 and 204 as failures."""
    verdict = classify(task(), answer(code), SETTINGS)
    assert verdict.decision == "complete"
    assert verdict.error is None


@pytest.mark.parametrize("code", [408, 423, 425, 429, 449, 500, 501, 502, 503, 504, 599])
def test_transient_statuses_and_5xx_retry(code: int) -> None:
    verdict = classify(task(), answer(code), SETTINGS)
    assert verdict.decision == "retry"
    assert str(code) in (verdict.error or "")


@pytest.mark.parametrize(
    "error",
    [
        "ConnectionError: connection refused",
        "timed out after 60 s",
        "ReadTimeout: read timed out",
    ],
)
def test_network_errors_and_timeouts_retry(error: str) -> None:
    verdict = classify(task(), answer(None, error), SETTINGS)
    assert verdict.decision == "retry"
    assert verdict.error == error


def test_410_fails_at_once_even_with_retries_left() -> None:
    verdict = classify(task(attempt=1, max_retries=36), answer(410), SETTINGS)
    assert verdict.decision == "fail"
    assert "410" in (verdict.error or "")


@pytest.mark.parametrize(
    "code", [300, 301, 304, 400, 401, 403, 404, 405, 409, 413, 415, 418, 422, 451]
)
def test_other_statuses_fail_at_once(code: int) -> None:
    verdict = classify(task(attempt=1), answer(code), SETTINGS)
    assert verdict.decision == "fail"
    assert str(code) in (verdict.error or "")


def test_the_transient_set_comes_from_settings() -> None:
    custom = load_settings({"NTQ_TRANSIENT_REQUEST_ERRORS": "418"})
    assert outcome(answer(418), settings=custom) == "retry"
    assert outcome(answer(429), settings=custom) == "fail"
    assert outcome(answer(503), settings=custom) == "retry"  # 5xx always retries


def test_out_of_retries_fails_and_keeps_the_last_error() -> None:
    """max_retries=1 allows two attempts: the retry after the first, none after the second."""
    assert outcome(answer(500), task(attempt=1, max_retries=1)) == "retry"
    verdict = classify(task(attempt=2, max_retries=1), answer(503), SETTINGS)
    assert verdict.decision == "fail"
    assert "503" in (verdict.error or "")
    timed_out = classify(
        task(attempt=1, max_retries=0), answer(None, "timed out after 1 s"), SETTINGS
    )
    assert timed_out.decision == "fail"
    assert "timed out after 1 s" in (timed_out.error or "")


def test_success_on_the_last_allowed_attempt_completes() -> None:
    assert outcome(answer(200), task(attempt=2, max_retries=1)) == "complete"


@pytest.mark.parametrize(("attempt", "base"), [(1, 2), (2, 4), (3, 8), (5, 32), (9, 100)])
def test_exponential_delay_after_the_nth_failure(attempt: int, base: float) -> None:
    verdict = classify(task(attempt=attempt, max_retries=1000), answer(500), SETTINGS)
    assert verdict.delay is not None
    assert base * 0.89 <= verdict.delay <= min(base * 1.11, 100)


@pytest.mark.parametrize(("attempt", "base"), [(1, 2), (2, 4), (3, 6), (60, 100)])
def test_linear_delay_after_the_nth_failure(attempt: int, base: float) -> None:
    held = task(attempt=attempt, max_retries=1000, backoff="linear")
    verdict = classify(held, answer(503), SETTINGS)
    assert verdict.delay is not None
    assert base * 0.89 <= verdict.delay <= min(base * 1.11, 100)


def test_retry_after_replaces_the_backoff() -> None:
    verdict = classify(task(attempt=1), answer(429, retry_after=30), SETTINGS)
    assert verdict.decision == "retry"
    assert verdict.delay == pytest.approx(30)
    on_503 = classify(task(attempt=6), answer(503, retry_after=1), SETTINGS)
    assert on_503.delay == pytest.approx(1)  # not the 64 s backoff


def test_retry_after_is_capped_at_the_maximum_delay() -> None:
    verdict = classify(task(), answer(503, retry_after=86400), SETTINGS)
    assert verdict.delay == pytest.approx(100)


def test_retry_after_does_not_turn_a_failure_into_a_retry() -> None:
    assert outcome(answer(404, retry_after=5)) == "fail"
    assert outcome(answer(410, retry_after=5)) == "fail"
    assert outcome(replace(answer(200), retry_after=5)) == "complete"
