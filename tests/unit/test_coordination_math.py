"""Pure coordination maths on a virtual clock: GCRA reservations, slot leases, limit specs."""

from __future__ import annotations

import heapq
import random

import pytest

from aiotask.coordination import spec
from aiotask.coordination.concurrency import SlotTable
from aiotask.coordination.ratelimit import gcra
from aiotask.exceptions import ConfigurationError


class Clocked:
    """One GCRA key driven by a virtual clock; records every granted start time."""

    def __init__(self, interval: float, burst: int = 1, ahead: float = 1.0) -> None:
        self.interval, self.burst, self.ahead = interval, burst, ahead
        self.tat: float | None = None
        self.starts: list[float] = []

    def ask(self, now: float) -> tuple[bool, float]:
        tat, grant = gcra(self.tat, now, self.interval, self.burst, self.ahead)
        if tat is not None:
            self.tat = tat
        if grant.granted:
            self.starts.append(now + grant.wait)
        return grant.granted, grant.wait


def test_requests_at_one_instant_are_spaced_by_the_interval_up_to_the_horizon() -> None:
    key = Clocked(interval=0.25, ahead=1.0)
    answers = [key.ask(100.0) for _ in range(6)]
    assert answers[:5] == [(True, 0.0), (True, 0.25), (True, 0.5), (True, 0.75), (True, 1.0)]
    granted, retry = answers[5]
    assert not granted and retry == pytest.approx(0.25)
    # asking again when told: booked exactly `ahead` ahead, right after the previous start
    granted, wait = key.ask(100.0 + retry)
    assert granted and wait == pytest.approx(1.0)
    assert key.starts[-1] == pytest.approx(101.25)


def test_a_refusal_books_nothing() -> None:
    key = Clocked(interval=10.0, ahead=1.0)
    assert key.ask(0.0) == (True, 0.0)
    tat = key.tat
    granted, retry = key.ask(0.5)
    assert not granted and retry == pytest.approx(8.5)
    assert key.tat == tat


def test_burst_lets_that_many_through_at_once_then_spaces_them() -> None:
    key = Clocked(interval=1.0, burst=3, ahead=0.0)
    assert [key.ask(5.0)[0] for _ in range(4)] == [True, True, True, False]


def test_idle_time_does_not_accumulate_credit() -> None:
    key = Clocked(interval=1.0, ahead=0.0)
    key.ask(0.0)
    # an hour idle: still one start now, the next one a full interval later
    assert key.ask(3600.0) == (True, 0.0)
    assert key.ask(3600.0)[0] is False


@pytest.mark.parametrize("burst", [1, 4])
def test_no_window_ever_holds_more_than_its_share_and_saturation_hits_the_rate(
    burst: int,
) -> None:
    """Workers asking at random times (again when told, or at once after a grant, with a
    random lag): starts never exceed W / interval + burst in any window W, and the long-run
    rate is exactly 1 / interval."""
    rng = random.Random(7)
    interval = 0.02  # 50/s
    key = Clocked(interval, burst, ahead=1.0)
    asks = [(rng.uniform(0, 1), worker) for worker in range(8)]
    heapq.heapify(asks)
    while asks[0][0] < 200.0:
        now, worker = heapq.heappop(asks)
        granted, wait = key.ask(now)
        lag = rng.expovariate(100.0)  # store round trips, other work
        heapq.heappush(asks, (now + lag if granted else now + wait + lag, worker))
    starts = sorted(key.starts)
    assert starts == key.starts  # reservations are handed out in order
    for window in (0.1, 1.0, 10.0):
        j = 0
        for i, start in enumerate(starts):
            while starts[j] < start - window + 1e-9:
                j += 1
            assert i - j + 1 <= window / interval + burst, (window, start)
    achieved = (len(starts) - burst) / (starts[-1] - starts[0])
    assert achieved == pytest.approx(1 / interval, rel=1e-6)


def test_slot_table_leases_hold_renew_lapse_and_release() -> None:
    table = SlotTable()
    assert table.acquire("k", 2, "a", 10.0, now=0.0)
    assert table.acquire("k", 2, "b", 10.0, now=1.0)
    assert not table.acquire("k", 2, "c", 10.0, now=2.0)
    assert table.acquire("k", 2, "a", 10.0, now=2.0)  # idempotent for a holder
    assert table.acquire("other", 2, "c", 10.0, now=2.0)  # keys are independent
    assert table.renew([("k", "a")], 10.0, now=9.0) == [True]  # a: until 19
    assert table.count("k", now=11.5) == 1  # b lapsed at 11 (its worker stopped renewing)
    assert table.renew([("k", "b")], 10.0, now=11.5) == [False]
    assert table.acquire("k", 2, "c", 10.0, now=11.5)
    table.release([("k", "a"), ("k", "zzz")])
    assert table.count("k", now=12.0) == 1


def test_key_values_from_kwargs_positional_arguments_and_callables() -> None:
    def fn(customer_id: int, amount: float = 0.0) -> None: ...

    assert spec.key_value("customer_id", [], {"customer_id": 7}) == "7"
    assert spec.key_value("customer_id", [8, 1.0], {}, fn) == "8"
    assert spec.key_value("customer_id", [9], {}, lambda ctx, customer_id: None, bound=True) == "9"
    assert spec.key_value(lambda c, **_: f"c{c}", [3], {}) == "c3"
    assert spec.key_value("missing", [1], {}, fn) is None
    assert spec.key_value(None, [1], {}) is None


def test_call_headers_override_the_task_options_with_keys_resolved_at_send() -> None:
    headers = spec.call_headers(
        "t", {"rate_limit": "120/m", "rate_limit_scope": "global", "rate_limit_key": "u"},
        [], {"u": "alice"},
    )  # fmt: skip
    assert headers == {spec.RATE: "2.0", spec.SCOPE: "global", spec.RATE_KEY: "alice"}
    task_defaults = spec.Limits(rate=1.0, scope="worker", concurrency=3)
    limits = spec.resolve("t", task_defaults, ("u", "c"), [], {"u": "bob", "c": 5}, headers)
    assert limits == spec.Limits(2.0, "global", "t:alice", 3, "t:5")
    assert limits.coordinated
    plain = spec.resolve("t", spec.Limits(rate=1.0), (None, None), [], {}, {})
    assert plain == spec.Limits(rate=1.0, rate_key="t", concurrency_key="t")
    assert not plain.coordinated


@pytest.mark.parametrize(
    ("scope", "concurrency", "key"),
    [("cluster", None, None), (None, 0, None), (None, True, None), (None, None, 5)],
)
def test_bad_options_fail_naming_the_task(scope: object, concurrency: object, key: object) -> None:
    with pytest.raises(ConfigurationError, match="task t:"):
        spec.check("t", scope, concurrency, {"rate_limit_key": key})
