"""The retry policy: how long to wait before the next attempt. Pure functions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

JITTER = 0.1  # +/- 10 %, so tasks that failed together do not retry in lockstep


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th failed attempt: exponential or linear, capped."""

    kind: str = "exponential"
    min_delay: float = 2.0
    max_delay: float = 7200.0

    def __post_init__(self) -> None:
        if self.kind not in ("exponential", "linear"):
            raise ValueError(f"unknown backoff {self.kind!r}")
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")

    def base_delay(self, failures: int) -> float:
        """The delay before jitter after ``failures`` failed attempts (1-based)."""
        n = max(failures, 1)
        if self.kind == "linear":
            return min(self.min_delay * n, self.max_delay)
        # Cap the exponent: 2**1100 overflows a float long before max_delay matters.
        return float(min(self.min_delay * 2 ** min(n - 1, 64), self.max_delay))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay with jitter, never above ``max_delay``."""
        spread = (rng or random).uniform(-JITTER, JITTER)
        return min(self.base_delay(failures) * (1 + spread), self.max_delay)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also admits "²" and the like
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
