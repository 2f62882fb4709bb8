"""Coordinated limits through a real Worker on memory:// (the memory coordination store):
global and keyed rates, per-call options, concurrency slots, and parking of a backlog."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from aiotask import App, TaskContext, group
from aiotask.exceptions import ConfigurationError
from aiotask.testing import start_worker


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@dataclass
class Seen:
    """What the tasks recorded: (start time, user), running counts per customer, retries."""

    ticks: list[tuple[float, str]] = field(default_factory=list)
    peaks: list[tuple[str, int]] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)

    def times(self, user: str | None = None) -> list[float]:
        return [t for t, u in self.ticks if user is None or u == user]


def make_app() -> tuple[App, Seen]:
    app = App("coordmem", broker="memory://", backend="memory://")
    seen = Seen()
    running: dict[str, int] = {}

    @app.task(name="cm.tick", rate_limit="20/s", rate_limit_scope="global", bind=True)
    async def tick(ctx: TaskContext, i: int, user: str = "-") -> int:
        seen.ticks.append((time.monotonic(), user))
        seen.retries.append(ctx.retries)
        return i

    @app.task(name="cm.hold", concurrency_limit=2, concurrency_key="customer")
    async def hold(customer: str) -> int:
        running[customer] = running.get(customer, 0) + 1
        seen.peaks.append((customer, running[customer]))
        await asyncio.sleep(0.05)
        running[customer] -= 1
        return running[customer]

    @app.task(name="cm.free")
    async def free(i: int) -> int:
        return i

    return app, seen


async def test_a_global_rate_holds_on_one_worker_with_many_slots() -> None:
    app, seen = make_app()
    async with app, start_worker(app, concurrency=50):
        results = [await app.send_task("cm.tick", args=(i,)) for i in range(30)]
        assert [await r.get(timeout=20) for r in results] == list(range(30))
    assert _max_in_window(seen.times(), 0.5) <= 20 * (0.5 + 0.2) + 1
    assert seen.retries == [0] * 30  # waiting for the limit is not a retry


async def test_per_call_options_override_and_key_the_budget() -> None:
    app, seen = make_app()
    async with app, start_worker(app, concurrency=50):
        # per call: 5/s per user, instead of the task's 20/s shared budget
        sends = [
            app.send_task(
                "cm.tick",
                args=(i, u),
                rate_limit="5/s",
                rate_limit_scope="global",
                rate_limit_key="user",
            )
            for i in range(6)
            for u in "ab"
        ]
        results = [await s for s in sends]
        assert len([await r.get(timeout=20) for r in results]) == 12
    for user in "ab":
        times = seen.times(user)
        assert len(times) == 6
        assert _max_in_window(times, 1.0) <= 5 * (1.0 + 0.2) + 1
    assert _max_in_window(seen.times(), 1.0) > 5 + 1  # two keys: two budgets


async def test_concurrency_limit_per_key_and_slots_released() -> None:
    app, seen = make_app()
    async with app, start_worker(app, concurrency=50):
        results = [await app.send_task("cm.hold", args=(c,)) for _ in range(10) for c in "xy"]
        await asyncio.gather(*(r.get(timeout=20) for r in results))
        store = app.backend.coordination_store("coordmem")  # type: ignore[union-attr]
        await asyncio.sleep(0.1)  # releases run in the background
        assert await store.slots_in_use("cm.hold:x") == 0
    for customer in "xy":
        peaks = [n for c, n in seen.peaks if c == customer]
        assert max(peaks) == 2  # never more than 2 at once, and the limit is used


async def test_a_backlog_past_the_hold_bound_is_parked_and_other_tasks_flow() -> None:
    app, seen = make_app()
    async with app, start_worker(app, concurrency=50, prefetch=4):  # holds at most 2 waiting
        throttled = [await app.send_task("cm.tick", args=(i,)) for i in range(30)]
        free = [await app.send_task("cm.free", args=(i,)) for i in range(5)]
        assert [await r.get(timeout=20) for r in free] == list(range(5))
        # the free tasks ran while most of the throttled backlog still waited (parked)
        assert len(seen.ticks) < 30
        assert sorted([await r.get(timeout=60) for r in throttled]) == list(range(30))
    assert seen.retries == [0] * 30
    assert _max_in_window(seen.times(), 0.5) <= 20 * (0.5 + 0.2) + 1


async def test_a_coordinated_limit_without_a_result_backend_is_dead_lettered() -> None:
    app = App("coordnone", broker="memory://", backend=None)

    @app.task(name="cn.hold", concurrency_limit=1)
    async def hold() -> None: ...

    async with app, start_worker(app):
        sent = await app.send_task("cn.hold")
        for _ in range(200):
            dead = await app.dead_letters.list()
            if dead:
                break
            await asyncio.sleep(0.05)
    [entry] = dead
    assert entry.id == sent.id and "needs a result backend" in entry.reason


def test_bad_limit_options_fail_at_definition_and_at_send() -> None:
    app = App("coordbad", broker="memory://", backend="memory://")
    bad: Any = {"rate_limit_scope": "cluster"}
    with pytest.raises(ConfigurationError, match="rate_limit_scope"):
        app.task(name="b.x", rate_limit="1/s", **bad)(lambda: None)
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        app.task(name="b.y", concurrency_limit=0)(lambda: None)
    task = app.task(name="b.z")(lambda: None)
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        task.message((), {}, concurrency_limit=-1)
    with pytest.raises(ConfigurationError, match="unknown call option"):
        task.message((), {}, rate_limits="1/s")


async def test_canvas_steps_carry_per_call_limits() -> None:
    app, seen = make_app()
    async with app, start_worker(app, concurrency=50):
        # the task allows 2 per customer; each signature narrows it to 1
        steps = [app.tasks["cm.hold"].s("z").set(concurrency_limit=1) for _ in range(4)]
        result = await group(steps).send()
        assert len(await result.get(timeout=20)) == 4
    assert [n for c, n in seen.peaks if c == "z"] == [1, 1, 1, 1]


async def test_inspect_stats_counts_messages_waiting_for_limits() -> None:
    app = App("coordstats", broker="memory://", backend="memory://")
    release = asyncio.Event()

    @app.task(name="cs.one", concurrency_limit=1)
    async def one() -> None:
        await release.wait()

    async with app, start_worker(app, name="w1", concurrency=10):
        first, second = await app.send_task("cs.one"), await app.send_task("cs.one")
        for _ in range(200):
            stats = (await app.control.inspect("stats", timeout=5))["w1"]
            if stats["active"] == 1 and stats["waiting_for_limits"] == 1:
                break
            await asyncio.sleep(0.05)
        assert stats["active"] == 1 and stats["waiting_for_limits"] == 1
        release.set()
        await first.get(timeout=10)
        await second.get(timeout=10)  # the slot freed by the first let the second start


async def test_a_key_callable_that_raises_dead_letters_the_message() -> None:
    app = App("coordkey", broker="memory://", backend="memory://")

    def broken(*args: object, **kwargs: object) -> str:
        raise KeyError("tenant")

    @app.task(name="ck.t", concurrency_limit=1, concurrency_key=broken)
    async def t() -> None: ...

    async with app, start_worker(app):
        sent = await app.send_task("ck.t")
        for _ in range(200):
            dead = await app.dead_letters.list()
            if dead:
                break
            await asyncio.sleep(0.05)
    [entry] = dead
    assert entry.id == sent.id and "KeyError" in entry.reason


async def test_warm_shutdown_frees_the_slot_of_a_buffered_message() -> None:
    app = App("coordbuf", broker="memory://", backend="memory://")
    release = asyncio.Event()

    @app.task(name="cb.busy")
    async def busy() -> None:
        await release.wait()

    @app.task(name="cb.limited", concurrency_limit=1)
    async def limited() -> None: ...

    async with app:
        store = app.backend.coordination_store("coordbuf")  # type: ignore[union-attr]
        async with start_worker(app, name="w1", concurrency=1, prefetch=4):
            await app.send_task("cb.busy")  # takes the worker's only slot
            await app.send_task("cb.limited")  # gets its cluster slot, then waits in the buffer
            for _ in range(200):
                if await store.slots_in_use("cb.limited") == 1:
                    break
                await asyncio.sleep(0.05)
            assert await store.slots_in_use("cb.limited") == 1
            asyncio.get_running_loop().call_later(0.3, release.set)
        # handed back unstarted: its slot was released, not left to lapse
        assert await store.slots_in_use("cb.limited") == 0


async def test_a_worker_scope_rate_with_a_key_splits_the_local_bucket() -> None:
    app, seen = make_app()
    async with app, start_worker(app, concurrency=50):
        sends = [
            app.send_task(
                "cm.tick",
                args=(i, u),
                rate_limit="4/s",
                rate_limit_scope="worker",
                rate_limit_key="user",
            )
            for i in range(5)
            for u in "ab"
        ]
        results = [await s for s in sends]
        assert len([await r.get(timeout=20) for r in results]) == 10
    for user in "ab":
        assert _max_in_window(seen.times(user), 1.0) <= 4 * (1.0 + 0.2) + 1
    assert _max_in_window(seen.times(), 1.0) > 4 + 1  # two keys: two local buckets
