"""Per-worker token buckets, keyed by task name: pure arithmetic over a clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiotask._time import monotonic

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, bursts up to `capacity`; reservations are first come, first served.

    `reserve()` takes a token now or books the next free one and says how long to wait, so a
    caller can schedule the start instead of holding a worker slot while it waits.
    """

    rate: float
    capacity: float = 1.0
    clock: Callable[[], float] = monotonic
    _tokens: float = field(init=False)
    _stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = self.capacity
        self._stamp = self.clock()

    def reserve(self) -> float:
        """Seconds until the reserved token is available (0.0: go now)."""
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """One bucket per rate-limited task name."""

    def __init__(self, clock: Callable[[], float] = monotonic) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._clock = clock

    def reserve(self, task: str, rate: float) -> float:
        bucket = self._buckets.get(task)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[task] = TokenBucket(rate, clock=self._clock)
        return bucket.reserve()
