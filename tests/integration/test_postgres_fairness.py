"""PostgreSQL fairness details beyond the contract suite: the switch between the plain and the
fair claim, turns across the queues of one receive, keys with nothing ready, the cursor kept
per queue set, and its slots (concurrent fair claims do not wait for each other)."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

import asyncpg
import pytest

from aiotask.brokers import Outgoing
from aiotask.brokers.postgres import PostgresBroker
from aiotask.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.postgres


@pytest.fixture
async def broker(postgres_url: str, namespace: str) -> AsyncIterator[PostgresBroker]:
    b = PostgresBroker(postgres_url, Settings(broker_url=postgres_url, key_prefix=namespace))
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def msg(queue: str, mid: str, key: str = "", **kw: float) -> Outgoing:
    return Outgoing(queue, mid.encode(), mid, fair_key=key, **kw)  # type: ignore[arg-type]


async def take(broker: PostgresBroker, queues: list[str], n: int) -> list[str]:
    got = await broker.receive(queues, n)
    await broker.ack(got)
    return [d.message_id for d in got]


async def cursors(postgres_url: str, namespace: str) -> dict[str, str]:
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch(f'SELECT queues, last_key FROM "{namespace}".fair_cursor')  # noqa: S608
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


async def test_plain_until_a_keyed_row_then_fair_then_plain_again(
    broker: PostgresBroker, postgres_url: str, namespace: str
) -> None:
    await broker.publish([msg("q", f"u{i}") for i in range(3)])
    assert await take(broker, ["q"], 1) == ["u0"]
    assert not broker._keyed
    assert await cursors(postgres_url, namespace) == {}  # a plain claim has no cursor
    await broker.publish([msg("q", f"a{i}", "a") for i in range(3)])
    # the unkeyed rows are the key "" and take their turn after a (keys after the cursor "")
    assert await take(broker, ["q"], 4) == ["a0", "u1", "a1", "u2"]
    assert await cursors(postgres_url, namespace) == {"q": ""}
    assert await take(broker, ["q"], 4) == ["a2"]
    await broker.publish([msg("q", "u3"), msg("q", "u4", priority=5)])
    # no keyed row is left: this claim runs the plain pick (priority first) and switches back
    assert await take(broker, ["q"], 2) == ["u4", "u3"]
    assert not broker._keyed


async def test_queues_of_one_receive_take_turns_and_share_a_cursor(
    broker: PostgresBroker, postgres_url: str, namespace: str
) -> None:
    await broker.publish([msg("q1", f"a{i}", "a") for i in range(4)])
    await broker.publish([msg("q2", f"u{i}") for i in range(2)] + [msg("q2", "b0", "b")])
    got = await take(broker, ["q2", "q1"], 6)
    # every (key, queue) in turn: a (q1), b (q2), then "" (q2) after wrapping round; each a
    # share of 6 / 3 keys (b has one row only)
    assert got == ["a0", "b0", "u0", "a1", "u1"]
    assert await take(broker, ["q1", "q2"], 6) == ["a2", "a3"]
    assert list(await cursors(postgres_url, namespace)) == ["q1\x1fq2"]


async def test_a_key_with_nothing_ready_takes_no_share(broker: PostgresBroker) -> None:
    later = time.time() + 60
    await broker.publish([msg("q", f"d{i}", "d", eta=later) for i in range(3)])
    await broker.publish([msg("q", f"a{i}", "a") for i in range(4)])
    # d has only delayed rows: a gets the whole claim, not half of it
    assert await take(broker, ["q"], 4) == ["a0", "a1", "a2", "a3"]
    assert await broker.purge("q") == 3


async def test_a_fair_claim_takes_a_free_cursor_slot_instead_of_waiting(
    broker: PostgresBroker, postgres_url: str, namespace: str
) -> None:
    await broker.publish([msg("q", f"{k}{i}", k) for k in "ab" for i in range(4)])
    assert await take(broker, ["q"], 1) == ["a0"]  # the first slot, "q", is at a
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():  # another claim holds the first slot
            await conn.execute(
                f'SELECT 1 FROM "{namespace}".fair_cursor WHERE queues = $1 FOR UPDATE',  # noqa: S608
                "q",
            )
            async with asyncio.timeout(10):  # does not wait for it: makes the second slot,
                assert await take(broker, ["q"], 1) == ["b0"]  # from the first one's place
            assert await cursors(postgres_url, namespace) == {"q": "a", "q\x1e1": "b"}
    finally:
        await conn.close()
    assert await take(broker, ["q"], 1) == ["b1"]  # the first slot is free again: after a
    assert await cursors(postgres_url, namespace) == {"q": "b", "q\x1e1": "b"}


async def test_with_every_cursor_slot_held_a_fair_claim_moves_none(
    broker: PostgresBroker, postgres_url: str, namespace: str
) -> None:
    await broker.publish([msg("q", f"{k}{i}", k) for k in "abc" for i in range(4)])
    assert await take(broker, ["q"], 1) == ["a0"]
    slots = [f"q\x1e{n}" for n in range(1, 8)]
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.executemany(
            f'INSERT INTO "{namespace}".fair_cursor (queues, last_key) VALUES ($1, $2)',  # noqa: S608
            [(slot, "c") for slot in slots],
        )
        async with conn.transaction():
            await conn.execute(
                f'SELECT 1 FROM "{namespace}".fair_cursor FOR UPDATE'  # noqa: S608
            )
            async with asyncio.timeout(10):  # from the first slot's place (a), moving none
                assert await take(broker, ["q"], 2) == ["b0", "c0"]
                assert await take(broker, ["q"], 2) == ["b1", "c1"]
        assert await cursors(postgres_url, namespace) == {"q": "a"} | dict.fromkeys(slots, "c")
    finally:
        await conn.close()


async def test_concurrent_consumers_on_their_own_slots_still_share_across_keys(
    broker: PostgresBroker, postgres_url: str, namespace: str
) -> None:
    """Fair claims that overlap take cursor slots of their own; the keys still take turns."""
    settings = Settings(broker_url=postgres_url, key_prefix=namespace)
    others = [PostgresBroker(postgres_url, settings) for _ in range(3)]
    for b in others:
        await b.connect()
    try:
        await broker.publish([msg("q", f"Z{i}", "Z") for i in range(600)])
        await broker.publish([msg("q", f"k{j}-{i}", f"k{j}") for i in range(30) for j in range(5)])
        taken: list[str] = []

        async def consume(b: PostgresBroker) -> None:
            while len(taken) < 120:
                got = await b.receive(["q"], 4)
                taken.extend(d.message_id[:2] if d.message_id[0] == "k" else "Z" for d in got)
                await b.ack(got)

        await asyncio.gather(*(consume(b) for b in [broker, *others]))
        first = collections.Counter(taken[:120])
        # 6 keys, 20 each in strict turns: Z's backlog of 600 does not take the lion's share
        assert set(first) == {"Z", "k0", "k1", "k2", "k3", "k4"}, first
        assert all(10 <= n <= 30 for n in first.values()), first
    finally:
        for b in others:
            await b.close()
