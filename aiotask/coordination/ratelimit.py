"""GCRA (the generic cell rate algorithm) on any clock: one number per key, no drift.

The state of a key is its theoretical arrival time (TAT): when the next start would be due if
starts came exactly `interval` apart. A request at `now` may start at `TAT - tau` (tau lets
`burst` starts through at once) and books the next one by moving TAT on by `interval`.
Because TAT is a point in time, not a count refilled by a timer, rounding never accumulates:
n grants always span at least (n - burst) * interval, on every store.

Grants are reservations: a start up to `ahead` seconds in the future is booked now, and the
caller waits on a timer for it. Further out, nothing is booked and the caller learns when to
ask again, so a worker that dies or hands messages back wastes at most `ahead` of budget.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds of future starts a worker may book; bounds the budget a dead worker wastes.
RESERVE_AHEAD = 1.0


@dataclass(frozen=True, slots=True)
class Grant:
    """A store's answer. granted: start in `wait` seconds (booked); else ask again in `wait`."""

    granted: bool
    wait: float


def gcra(
    tat: float | None, now: float, interval: float, burst: int = 1, ahead: float = RESERVE_AHEAD
) -> tuple[float | None, Grant]:
    """(new TAT, answer) for one request at `now`; the new TAT is None when nothing changed."""
    tat = now if tat is None or tat < now else tat
    tau = (max(burst, 1) - 1) * interval
    wait = max(tat - tau - now, 0.0)
    if wait > ahead:
        return None, Grant(False, wait - ahead)
    return tat + interval, Grant(True, wait)


def interval_of(rate: float) -> float:
    """Seconds between starts for `rate` starts per second."""
    return 1.0 / rate
