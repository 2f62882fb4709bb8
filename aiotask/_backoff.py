"""One exponential backoff with a deadline, for every loop that waits out an unreachable server.

Brokers, backends and the settler all retry the same way: short first pause, doubling up to a
cap, and a deadline (`broker_unreachable_timeout`) counted from the first failure, after which
the caller gives up loudly instead of hanging forever.
"""

from __future__ import annotations

import asyncio
import math

from aiotask._time import monotonic


class Backoff:
    """Delays first, 2*first, ... capped at `cap`; `expired` once `deadline` s have passed.

    The clock starts at the first `sleep()` (the first failure), and `reset()` after a success
    starts the next outage from scratch.
    """

    __slots__ = ("_delay", "_started", "cap", "deadline", "first")

    def __init__(self, first: float = 0.05, cap: float = 2.0, deadline: float = math.inf) -> None:
        self.first = first
        self.cap = cap
        self.deadline = deadline
        self._delay = first
        self._started: float | None = None

    @property
    def failing(self) -> bool:
        """True between a failure and the next reset(): the caller logs the first one only."""
        return self._started is not None

    @property
    def elapsed(self) -> float:
        """Seconds since the first failure of this outage (0 when not failing)."""
        return 0.0 if self._started is None else monotonic() - self._started

    @property
    def expired(self) -> bool:
        return self.elapsed >= self.deadline

    def next_delay(self) -> float:
        """The pause before the next attempt (never past the deadline); starts the clock."""
        mono = monotonic()
        if self._started is None:
            self._started = mono
        delay = min(self._delay, max(self._started + self.deadline - mono, 0.0))
        self._delay = min(self._delay * 2, self.cap)
        return delay

    async def sleep(self) -> bool:
        """Pause before the next attempt; False (without pausing) once the deadline has passed."""
        if self.expired:
            return False
        await asyncio.sleep(self.next_delay())
        return True

    def reset(self) -> None:
        self._delay = self.first
        self._started = None
