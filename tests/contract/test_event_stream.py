"""The capped event stream every broker carries (EventStream): emit, follow live, stay capped."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from aiotask.brokers.base import END, EVENTS_CAP, EventLog, EventStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.brokers import Broker


@pytest.fixture
async def stream(broker: Broker, namespace: str) -> AsyncIterator[EventStream]:
    assert isinstance(broker, EventStream)
    try:
        yield broker
    finally:
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        if isinstance(broker, RabbitMQBroker):
            async with broker._admin() as channel:
                await channel.exchange_delete(f"{namespace}.events")


async def take(feed: AsyncIterator[bytes], n: int, timeout: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        async for body in feed:
            got.append(body)
            if len(got) == n:
                break
    return got


def event(i: int, kind: str = "task-received") -> bytes:
    return b'{"type":"%s","i":%d}' % (kind.encode(), i)


async def test_a_follower_sees_what_is_emitted_after_it_subscribed(stream: EventStream) -> None:
    await stream.emit_events([event(-1)])  # before anyone follows: not seen
    async with stream.events() as feed:
        await stream.emit_events([event(0), event(1, "worker-heartbeat")])
        await stream.emit_events([event(2, "task-succeeded")])
        got = await take(feed, 3)
    assert got == [event(0), event(1, "worker-heartbeat"), event(2, "task-succeeded")]


async def test_every_follower_sees_every_event(stream: EventStream) -> None:
    async with stream.events() as one, stream.events() as two:
        await stream.emit_events([event(i) for i in range(50)])
        expected = [event(i) for i in range(50)]
        assert await take(one, 50) == expected
        assert await take(two, 50) == expected


async def test_an_empty_batch_writes_nothing(stream: EventStream) -> None:
    async with stream.events() as feed:
        await stream.emit_events([])
        with pytest.raises(TimeoutError):
            await take(feed, 1, timeout=0.5)


async def test_the_stream_is_capped(
    stream: EventStream, request: pytest.FixtureRequest, namespace: str
) -> None:
    kind = request.node.callspec.params["broker"]
    if kind == "amqp":
        pytest.skip("a topic exchange stores nothing; its followers' queues are capped")
    total = EVENTS_CAP + 700
    for start in range(0, total, 100):
        await stream.emit_events([event(i) for i in range(start, min(start + 100, total))])
    if kind == "memory":
        from aiotask.brokers.memory import MemoryBroker

        assert isinstance(stream, MemoryBroker)
        assert len(stream.event_log) == EVENTS_CAP
        assert stream.event_log[-1] == event(total - 1)
    elif kind == "sqlite":
        from aiotask.brokers.sqlite import SQLiteBroker

        assert isinstance(stream, SQLiteBroker)
        with contextlib.closing(sqlite3.connect(stream.path)) as conn:
            count, newest = conn.execute(
                "SELECT count(*), (SELECT body FROM aiotask_events ORDER BY id DESC LIMIT 1) "
                "FROM aiotask_events"
            ).fetchone()
        assert count == EVENTS_CAP
        assert newest == event(total - 1)
    elif kind == "postgres":
        import asyncpg

        pg = await asyncpg.connect(request.getfixturevalue("postgres_url"))
        try:
            row = await pg.fetchrow(
                f'SELECT count(*), (SELECT body FROM "{namespace}".events ORDER BY id DESC '  # noqa: S608
                f'LIMIT 1) FROM "{namespace}".events'
            )
        finally:
            await pg.close()
        assert row is not None
        count, newest = row
        assert count == EVENTS_CAP
        assert newest == event(total - 1)
    else:
        from redis.asyncio import Redis

        client = Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            length = await client.xlen(f"{namespace}:events")
            last: Any = await client.xrevrange(f"{namespace}:events", count=1)
        finally:
            await client.aclose()
        assert EVENTS_CAP <= length < total  # MAXLEN ~ trims whole nodes: about the cap
        assert last[0][1][b"e"] == event(total - 1)


async def take_positioned(
    feed: AsyncIterator[tuple[str, bytes]], n: int, timeout: float = 10.0
) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(timeout):
        async for item in feed:
            got.append(item)
            if len(got) == n:
                break
    return got


async def test_a_follower_resumes_after_a_saved_position(
    stream: EventStream, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    if not isinstance(stream, EventLog):
        kind = request.node.callspec.params["broker"]
        assert kind in ("memory", "amqp")  # the others keep positions
        pytest.skip(f"{kind}: the stream has no positions to resume from")
    await stream.emit_events([event(0), event(1)])
    async with stream.events_after(None) as feed:  # None: all that is kept
        first = await take_positioned(feed, 2)
    assert [body for _, body in first] == [event(0), event(1)]
    saved = first[0][0]
    await stream.emit_events([event(2)])  # while nobody follows
    async with stream.events_after(saved) as feed:
        again = await take_positioned(feed, 2)
    assert again[0] == first[1]
    position, body = again[1]
    assert body == event(2)
    async with stream.events_after(END) as feed:  # from now
        await stream.emit_events([event(3)])
        assert [b for _, b in await take_positioned(feed, 1)] == [event(3)]
    # trimmed past the saved position: what is left, and a log line says so
    for start in range(0, EVENTS_CAP + 300, 100):
        await stream.emit_events([event(i) for i in range(start + 10, start + 110)])
    with caplog.at_level("WARNING"):
        async with stream.events_after(position) as feed:
            [(_, oldest)] = await take_positioned(feed, 1)
    assert oldest != event(3)
    assert "trimmed past position" in caplog.text
