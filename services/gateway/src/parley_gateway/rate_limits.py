"""Counting primitives for limits, driven by an injected clock (tested without a stack).

- `TokenBucket`: units (audio seconds, `text.input` events) with a burst, refilled at a rate;
- `ErrorThrottle`: error events per second to one connection, and how many were held back.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`capacity` units at most, refilled at `rate` units a second; starts full.

    A cost above the capacity passes when the bucket is full, and leaves it in debt.
    """

    def __init__(self, capacity: float, rate: float, clock: Clock) -> None:
        self.capacity = capacity
        self.rate = rate
        self.clock = clock
        self.tokens = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, cost: float = 1.0) -> bool:
        self._refill()
        if self.tokens + 1e-9 < min(cost, self.capacity):
            return False
        self.tokens -= cost
        return True

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until `cost` would pass."""
        self._refill()
        return max(0.0, (min(cost, self.capacity) - self.tokens) / self.rate)


class ErrorThrottle:
    """At most `per_second` error events a second (a burst of as many), then one summary a second.

    `admit()` says whether an error may go; held-back ones are counted, and `summary()` (due
    `SUMMARY_S` after the first of them) gives their number once.
    """

    SUMMARY_S = 1.0

    def __init__(self, per_second: int, clock: Clock) -> None:
        self.per_second = per_second
        self.clock = clock
        self._bucket = TokenBucket(per_second, per_second, clock)
        self.pending = 0  # held back since the last summary
        self.suppressed = 0  # held back in all
        self._first_pending: float | None = None

    def admit(self) -> bool:
        if self._bucket.take():
            return True
        self.pending += 1
        self.suppressed += 1
        if self._first_pending is None:
            self._first_pending = self.clock()
        return False

    def summary_in(self) -> float | None:
        """Seconds until the summary of held-back errors is due; None when none are held back."""
        if self._first_pending is None:
            return None
        return max(0.0, self._first_pending + self.SUMMARY_S - self.clock())

    def summary(self) -> int:
        """How many errors were held back since the last summary (and start counting again)."""
        count, self.pending, self._first_pending = self.pending, 0, None
        return count
