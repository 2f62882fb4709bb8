"""The beat loop on a virtual clock over the memory store: exactly once, recovery, policies."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from aiotask import App
from aiotask.beat.entry import Entry
from aiotask.beat.runner import Beat
from aiotask.beat.schedule import Every
from aiotask.beat.store import PENDING_TIMEOUT, MemoryScheduleStore
from aiotask.exceptions import BrokerConnectionError, ConfigurationError
from aiotask.protocol import decode


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def app() -> App:
    a = App("beat", broker="memory://", backend="memory://")

    @a.task(name="beat.tick")
    async def tick(n: int = 0) -> int:
        return n

    await a.connect()
    return a


async def sent(app: App) -> list[tuple[str, str]]:
    """(task id, task name) of everything queued so far, drained from the broker."""
    out: list[tuple[str, str]] = []
    while True:
        try:
            async with asyncio.timeout(0.05):
                got = await app.broker.receive(["default"], 1000)
        except TimeoutError:
            return out
        out += [(d.message_id, decode(d.body).task) for d in got]
        await app.broker.ack(got)


def every(seconds: float, **kw: object) -> dict[str, Entry]:
    return {"e": Entry(name="e", task="beat.tick", schedule=Every(seconds), **kw)}  # type: ignore[arg-type]


async def test_three_beats_send_each_slot_once(app: App) -> None:
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    beats = [Beat(app, store, every(1), clock=clock, name=f"b{i}") for i in range(3)]
    for step in range(40):
        clock.t = 1000.0 + step * 0.5
        for b in beats[step % 3 :] + beats[: step % 3]:
            await b.tick()
    ids = [i for i, _ in await sent(app)]
    assert len(ids) == len(set(ids))
    # first tick at 1000.0 registers the entry; slots 1001..1019 are each sent once
    assert len(ids) == 19
    assert sum(b.sent for b in beats) == 19


async def test_skewed_clocks_still_send_each_slot_once(app: App) -> None:
    store = MemoryScheduleStore()
    base = Clock(1000.0)
    ahead, behind = Clock(0.0), Clock(0.0)
    beats = [
        Beat(app, store, every(1), clock=base, name="on-time"),
        Beat(app, store, every(1), clock=ahead, name="ahead"),
        Beat(app, store, every(1), clock=behind, name="behind"),
    ]
    for step in range(60):
        base.t = 1000.0 + step * 0.3
        ahead.t, behind.t = base.t + 2.0, base.t - 2.0
        for b in beats:
            await b.tick()
    ids = [i for i, _ in await sent(app)]
    assert len(ids) == len(set(ids))
    assert 16 <= len(ids) <= 20  # 1000.0+2 .. 1017.7+2 on the fastest clock


async def test_a_slot_whose_beat_died_after_claiming_is_resent_by_another(app: App) -> None:
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    dying = Beat(app, store, every(10), clock=clock, name="dying")
    await dying.tick()  # registers the entry
    clock.t = 1010.0

    async def broken(messages: object, *, confirm: bool = True) -> None:
        raise BrokerConnectionError("killed between claim and publish")

    app.publish = broken  # type: ignore[method-assign]
    with pytest.raises(BrokerConnectionError):
        await dying.tick()
    del app.publish
    other = Beat(app, store, every(10), clock=clock, name="other")
    clock.t = 1010.5
    await other.tick()
    assert await sent(app) == []  # too early: the first beat may still be publishing
    clock.t = 1010.0 + PENDING_TIMEOUT + 1
    await other.tick()
    [(task_id, name)] = await sent(app)
    assert (task_id, name) == (every(10)["e"].slot_id(1010.0), "beat.tick")
    state = (await store.states(["e"]))["e"]
    assert orjson.loads(state.state or b"{}")["pending"] == []


async def test_overlap_skip_counts_skipped_slots(app: App) -> None:
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    beat = Beat(app, store, every(10, overlap="skip"), clock=clock)
    for t in (1000.0, 1010.0, 1020.0, 1030.0):
        clock.t = t
        await beat.tick()
    # nothing ran the first slot's task (no worker): later slots are skipped as overlaps
    assert len(await sent(app)) == 1
    assert await store.skip_counts(["e"]) == {"e": {"overlap": 2}}


async def test_dynamic_entries_and_pauses_are_seen_on_reload(app: App) -> None:
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    beat = Beat(app, store, {}, clock=clock)
    await store.put_entry("dyn", orjson.dumps({"task": "beat.tick", "every": 5, "args": [7]}))
    beat.changed.set()
    await beat.tick()
    clock.t = 1005.0
    await beat.tick()
    assert [n for _, n in await sent(app)] == ["beat.tick"]
    await store.set_paused("dyn", True)
    beat.changed.set()
    clock.t = 1010.0
    await beat.tick()
    assert await sent(app) == []
    assert await store.skip_counts(["dyn"]) == {"dyn": {"paused": 1}}
    await store.remove_entry("dyn")
    beat.changed.set()
    assert await beat.tick() > 0
    assert "dyn" not in beat.entries


async def test_unregistered_task_refused_at_start(app: App) -> None:
    entries = {"x": Entry(name="x", task="nope.missing", schedule=Every(1))}
    with pytest.raises(ConfigurationError, match=r"'nope\.missing' is not registered"):
        Beat(app, MemoryScheduleStore(), entries).check()
