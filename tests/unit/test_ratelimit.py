from __future__ import annotations

from aiotask.ratelimit import RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_spaces_reservations_by_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(5.0, clock=clock)
    delays = [bucket.reserve() for _ in range(4)]
    assert delays == [0.0, 0.2, 0.4, 0.6000000000000001] or [round(d, 6) for d in delays] == [
        0.0,
        0.2,
        0.4,
        0.6,
    ]
    clock.now += 10  # idle refills, but only up to the capacity
    assert bucket.reserve() == 0.0
    assert round(bucket.reserve(), 6) == 0.2


def test_limiter_keeps_one_bucket_per_task() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert limiter.reserve("a", 1.0) == 0.0
    assert limiter.reserve("b", 1.0) == 0.0
    assert limiter.reserve("a", 1.0) == 1.0
