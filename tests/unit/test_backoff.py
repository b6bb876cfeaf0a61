"""The retry policy (SPEC §4): exponential or linear, capped, with small jitter; Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ntq.backoff import Backoff, parse_retry_after


@pytest.mark.parametrize(("failures", "expected"), [(1, 2), (2, 4), (3, 8), (4, 16), (10, 1024)])
def test_exponential_doubles_from_the_minimum(failures: int, expected: float) -> None:
    assert Backoff("exponential", 2, 7200).base_delay(failures) == expected


@pytest.mark.parametrize(("failures", "expected"), [(1, 2), (2, 4), (3, 6), (10, 20)])
def test_linear_grows_by_the_minimum(failures: int, expected: float) -> None:
    assert Backoff("linear", 2, 7200).base_delay(failures) == expected


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_delay_is_capped_at_the_maximum(kind: str) -> None:
    policy = Backoff(kind, 2, 60)
    assert policy.base_delay(1000) == 60
    rng = random.Random(1)
    assert all(policy.delay(n, rng) <= 60 for n in range(1, 200))


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = Backoff("exponential", 2, 7200)
    assert policy.base_delay(100_000) == 7200
    assert policy.delay(100_000) <= 7200


def test_jitter_is_small_and_actually_varies() -> None:
    policy = Backoff("exponential", 10, 7200)
    rng = random.Random(42)
    samples = [policy.delay(3, rng) for _ in range(500)]  # base 40 s
    assert all(36 <= s <= 44 for s in samples), (min(samples), max(samples))
    assert len({round(s, 6) for s in samples}) > 100  # not lockstep


def test_zero_minimum_means_retry_at_once() -> None:
    assert Backoff("exponential", 0, 10).delay(5) == 0


@pytest.mark.parametrize(
    ("kind", "low", "high"),
    [
        ("fibonacci", 2, 10),
        ("exponential", -1, 10),
        ("linear", 10, 2),
    ],
)
def test_invalid_policies_are_refused(kind: str, low: float, high: float) -> None:
    with pytest.raises(ValueError, match=r"."):
        Backoff(kind, low, high)


@pytest.mark.parametrize(("header", "seconds"), [("2", 2.0), (" 120 ", 120.0), ("0", 0.0)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(90)


def test_retry_after_in_the_past_means_now() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    earlier = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "Tuesday", "²", "1²", "٣"])
def test_unusable_retry_after_is_ignored(header: str | None) -> None:
    assert parse_retry_after(header) is None
