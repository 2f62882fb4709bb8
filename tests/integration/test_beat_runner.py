"""The beat loop on a virtual clock over the memory store: exactly once, recovery, policies."""

from __future__ import annotations

import asyncio
from typing import Any

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


async def tick_with_publish_failing(app: App, beat: Beat, why: str) -> None:
    """One tick of `beat` whose publish fails after its claim (a broker outage, or a beat
    killed between claim and publish, as far as the store can tell)."""

    async def failing(messages: object, *, confirm: bool = True) -> None:
        raise BrokerConnectionError(why)

    app.publish = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(BrokerConnectionError):
            await beat.tick()
    finally:
        del app.publish


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


async def test_a_beat_that_read_before_another_claimed_sends_nothing_twice(app: App) -> None:
    """The race a CI run hit: beat "ahead" (clock +2 s) reads the watermark, beat "on-time"
    claims and sends two slots (it stalled over one), then "ahead" claims through a later slot
    from the watermark it read. It must lose, re-read, and send only the slots after."""
    store = MemoryScheduleStore()
    on_time, ahead = Clock(1000.0), Clock(1000.0)
    first = Beat(app, store, every(1, catch_up="all"), clock=on_time, name="on-time")
    late = Beat(app, store, every(1, catch_up="all"), clock=ahead, name="ahead")
    await first.tick()  # registers the entry at 1000
    await late.tick()  # reads 1000; nothing due yet
    on_time.t, ahead.t = 1002.0, 1004.0
    read = store.states

    async def interleaved(names: object) -> object:
        states = await read(names)  # type: ignore[arg-type]
        store.states = read  # type: ignore[method-assign]
        await first.tick()  # between ahead's read and its claim: claims 1001 and 1002
        return states

    store.states = interleaved  # type: ignore[method-assign,assignment]
    await late.tick()  # its claim (1001..1004 from 1000) loses; it re-reads at once
    await late.tick()  # and sends 1003 and 1004 only
    ids = [i for i, _ in await sent(app)]
    e = every(1)["e"]
    assert sorted(ids) == sorted(e.slot_id(float(s)) for s in (1001, 1002, 1003, 1004))
    assert (first.sent, late.sent) == (2, 2)


async def test_a_slot_whose_beat_died_after_claiming_is_resent_by_another(app: App) -> None:
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    dying = Beat(app, store, every(10), clock=clock, name="dying")
    await dying.tick()  # registers the entry
    clock.t = 1010.0
    await tick_with_publish_failing(app, dying, "killed between claim and publish")
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


async def test_a_broker_outage_loses_no_slot_of_a_catch_up_all_entry(app: App) -> None:
    """One beat, an every-second entry, the broker down for three ticks: each failed claim is
    sent again on the next tick, never dropped by the next slot's claim (it used to be: the
    new claim replaced the pending one), and each slot goes out once."""
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    beat = Beat(app, store, every(1, catch_up="all"), clock=clock)
    await beat.tick()
    for t in (1001.0, 1002.0, 1003.0):
        clock.t = t
        await tick_with_publish_failing(app, beat, "broker down")
    for t in (1004.0, 1004.0, 1005.0):
        clock.t = t
        await beat.tick()
    ids = [i for i, _ in await sent(app)]
    e = every(1)["e"]
    assert sorted(ids) == sorted(e.slot_id(float(s)) for s in range(1001, 1006))


async def test_a_claim_published_but_not_settled_is_confirmed_not_sent_again(app: App) -> None:
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    beat = Beat(app, store, every(1), clock=clock)
    await beat.tick()
    settle = store.settle

    async def store_gone(*args: object) -> None:
        raise BrokerConnectionError("store down after the publish")

    store.settle = store_gone  # type: ignore[method-assign,assignment]
    clock.t = 1001.0
    with pytest.raises(BrokerConnectionError):
        await beat.tick()
    store.settle = settle  # type: ignore[method-assign]
    for t in (1001.0, 1002.0, 1002.0):  # looks again a second after the failure
        clock.t = t
        await beat.tick()
    ids = [i for i, _ in await sent(app)]
    e = every(1)["e"]
    assert sorted(ids) == sorted(e.slot_id(s) for s in (1001.0, 1002.0))
    state = orjson.loads((await store.states(["e"]))["e"].state or b"{}")
    assert state["pending"] == []


async def test_a_dead_beats_slot_of_a_frequent_entry_is_resent_not_dropped(app: App) -> None:
    """A beat dies between claim and publish of slot 1001 of an every-second entry. The other
    beat does not claim past the unconfirmed slot (that dropped it); it waits, then sends it
    and every later slot once."""
    store = MemoryScheduleStore()
    clock = Clock(1000.0)
    dying = Beat(app, store, every(1, catch_up="all"), clock=clock, name="dying")
    await dying.tick()
    clock.t = 1001.0
    await tick_with_publish_failing(app, dying, "killed between claim and publish")
    other = Beat(app, store, every(1, catch_up="all"), clock=clock, name="other")
    t = 1001.0
    while t < 1001.0 + PENDING_TIMEOUT + 3:
        t += 0.5
        clock.t = t
        await other.tick()
        if t < 1001.0 + PENDING_TIMEOUT:
            assert other.sent == 0, t  # the dead beat's claim might still be published
    ids = [i for i, _ in await sent(app)]
    e = every(1)["e"]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(e.slot_id(float(s)) for s in range(1001, int(t) + 1))


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


async def test_a_burst_is_sent_in_batches_each_slot_once_through_a_failed_batch(
    app: App,
) -> None:
    """2,600 entries due at one instant: six batches; the third one's publish fails, its
    slots are resent (same ids) once their claim is stale, the other batches' are not."""
    from aiotask.beat import runner

    static = {
        f"e{i}": Entry(name=f"e{i}", task="beat.tick", schedule=Every(60)) for i in range(2600)
    }
    clock = Clock(1000.0)
    beat = Beat(app, MemoryScheduleStore(), static, clock=clock)
    await beat.tick()  # registers every entry
    publish, calls = app.publish, []

    async def flaky(messages: object, *, confirm: bool = True) -> None:
        calls.append(len(messages))  # type: ignore[arg-type]
        if len(calls) == 3:
            raise BrokerConnectionError("broker away for one batch")
        await publish(messages, confirm=confirm)  # type: ignore[arg-type]

    app.publish = flaky  # type: ignore[method-assign]
    clock.t = 1020.0
    with pytest.raises(BrokerConnectionError):
        await beat.tick()
    assert sorted(calls) == sorted([runner.FIRE_BATCH] * 5 + [2600 - 5 * runner.FIRE_BATCH])
    first = [i for i, _ in await sent(app)]
    assert len(first) == 2600 - calls[2]
    clock.t = 1020.0 + PENDING_TIMEOUT + 1  # the failed batch's claims are stale: resent
    await beat.tick()
    again = [i for i, _ in await sent(app)]
    assert len(again) == calls[2] and not set(again) & set(first)
    assert {e.slot_id(1020.0) for e in static.values()} == set(first) | set(again)


async def test_every_skip_reason_is_counted_and_shown_to_users(app: App) -> None:
    """Catch-up cap, expiry, overlap and pause: counted by reason in the store, returned by
    app.schedules.list() and printed by `aiotask schedule list`."""
    from aiotask.cli._beat import _line

    specs: dict[str, dict[str, Any]] = {
        "cap": {"every": 10, "catch_up": "all", "catch_up_limit": 3},
        "exp": {"every": 10, "catch_up": "all", "expires": 5},
        "ovl": {"every": 10, "overlap": "skip"},
        "pau": {"every": 10},
    }
    for name, spec in specs.items():
        await app.schedules.add(name, task="beat.tick", **spec)
    store = await app.schedules.store()
    clock = Clock(1000.0)
    beat = Beat(app, store, {}, clock=clock)
    await beat.tick()  # registers every entry at 1000
    clock.t = 1010.0
    await beat.tick()  # one slot each; "ovl"'s task never runs (no worker)
    await app.schedules.pause("pau")
    beat.changed.set()
    clock.t = 1100.0  # 9 more slots (1020..1100) for each entry
    await beat.tick()
    skipped = {i.name: i.skipped for i in await app.schedules.list()}
    assert skipped == {
        "cap": {"missed (catch_up_limit)": 6},  # 3 of the 9 sent
        "exp": {"expired": 8},  # 1020..1090 are over 5 s late; 1100 is on time
        "ovl": {"missed": 8, "overlap": 1},  # catch_up="latest" keeps 1 of 9: it overlaps
        "pau": {"paused": 1, "missed": 8},
    }
    lines = {i.name: _line(i) for i in await app.schedules.list()}
    assert "skipped: expired: 8" in lines["exp"]
    assert "skipped: missed (catch_up_limit): 6" in lines["cap"]


async def test_an_entry_in_the_heap_twice_is_fired_once_and_on_time(app: App) -> None:
    """Regression: an edit re-adds the entry to the heap at the instant it was already due;
    both copies were fired in one batch, the second claim lost to the first, and the slot was
    dropped until the pending timeout (10 s late)."""
    await app.schedules.add("ed", task="beat.tick", every=2)
    clock = Clock(1_795_983_940.0)
    beat = Beat(app, await app.schedules.store(), {}, clock=clock)
    await beat.tick()
    clock.t = 1_795_983_952.0
    await beat.tick()
    await app.schedules.change("ed", cron="*/3 * * * * *")
    beat.changed.set()
    for t in range(953, 962):
        clock.t = 1_795_983_000.0 + t
        await beat.tick()
    ids = [i for i, _ in await sent(app)]
    entry = beat.entries["ed"]
    slots = [1_795_983_952.0, 1_795_983_954.0, 1_795_983_957.0, 1_795_983_960.0]
    assert ids == [entry.slot_id(s) for s in slots]
