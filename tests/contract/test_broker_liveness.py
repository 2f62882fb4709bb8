"""Delivery counting of abandoned work and heartbeat takeover (brokers/base.py), on every broker."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from aiotask.brokers import Broker, Outgoing
from aiotask.brokers import from_url as broker_from_url
from aiotask.settings import Settings
from tests.contract.conftest import MAX_DELIVERIES, delete_amqp_queues, delete_prefix
from tests.contract.test_broker_contract import receive_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: Leases far longer than the test: only a lapsed heartbeat can explain a fast takeover.
LONG_LEASE = 60.0
HEARTBEAT = 0.2
LOST_AFTER = 1.0


def out(i: int) -> Outgoing:
    return Outgoing(queue="q", body=f"body-{i}".encode(), message_id=f"m{i}")


async def test_counted_nack_counts_until_dead_lettered(broker: Broker) -> None:
    await broker.publish([out(1)])
    seen = []
    for _ in range(MAX_DELIVERIES):
        [d] = await receive_all(broker, ["q"], 1)
        seen.append(d.deliveries)
        await broker.nack([d], requeue=True, counted=True)
    assert seen == list(range(1, MAX_DELIVERIES + 1))
    deadline = time.monotonic() + 5.0
    dead = await broker.dead_letters("q")
    while not dead and time.monotonic() < deadline:
        # some brokers dead-letter lazily, when the exhausted message comes up for delivery
        try:
            async with asyncio.timeout(0.3):
                got = await broker.receive(["q"], 10)
        except TimeoutError:
            got = []
        assert got == [], "an exhausted message was delivered again"
        dead = await broker.dead_letters("q")
    [entry] = dead
    assert entry.message_id == "m1"
    assert f"max_deliveries={MAX_DELIVERIES}" in entry.reason


async def test_uncounted_nack_keeps_the_count(broker: Broker) -> None:
    await broker.publish([out(1)])
    for _ in range(MAX_DELIVERIES + 1):
        [d] = await receive_all(broker, ["q"], 1)
        assert d.deliveries == 1
        await broker.nack([d], requeue=True)
    [d] = await receive_all(broker, ["q"], 1)
    await broker.ack([d])


@pytest.fixture
async def pair(
    request: pytest.FixtureRequest, namespace: str, broker: Broker
) -> AsyncIterator[tuple[Broker, Broker]]:
    """Two consumers of one queue on one server (separate processes, in effect)."""
    kind = request.node.callspec.params["broker"]
    if not broker.capabilities.leases or kind == "memory":
        pytest.skip(f"{kind}: the server itself notices a dead consumer (no takeover needed)")
    url = {"redis": "redis_url", "sqlite": "sqlite_url", "postgres": "postgres_url"}[kind]
    url = request.getfixturevalue(url)
    settings = Settings(
        broker_url=url,
        key_prefix=namespace,
        visibility_timeout=LONG_LEASE,
        max_deliveries=MAX_DELIVERIES,
        worker_heartbeat_interval=HEARTBEAT,
        worker_lost_after=LOST_AFTER,
    )
    made = [broker_from_url(url, settings, f"app-{namespace}") for _ in range(2)]
    for b in made:
        await b.connect()
    try:
        yield made[0], made[1]
    finally:
        for b in made:
            await b.purge("q")
            if kind == "amqp":
                await delete_amqp_queues(b)
            await b.close()
        if kind == "redis":
            await delete_prefix(url, namespace)


async def _beat(b: Broker, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await b.heartbeat()
        try:
            async with asyncio.timeout(HEARTBEAT):
                await stop.wait()
        except TimeoutError:
            pass


async def test_lost_consumer_work_is_taken_over_fast(pair: tuple[Broker, Broker]) -> None:
    dead, alive = pair
    await dead.heartbeat()
    await dead.publish([out(1)])
    [held] = await receive_all(dead, ["q"], 1)
    # `dead` stops beating (killed, in effect): its message must move long before its lease.
    stop = asyncio.Event()
    beating = asyncio.create_task(_beat(alive, stop))
    started = time.monotonic()
    try:
        [d] = await receive_all(alive, ["q"], 1, timeout=LOST_AFTER * 8)
    finally:
        stop.set()
        await beating
    assert d.message_id == held.message_id
    assert d.deliveries == 2
    assert time.monotonic() - started < LONG_LEASE / 4
    await alive.ack([d])


async def test_live_consumer_work_is_never_taken(pair: tuple[Broker, Broker]) -> None:
    owner, other = pair
    stop = asyncio.Event()
    beats = [asyncio.create_task(_beat(b, stop)) for b in (owner, other)]
    try:
        await owner.publish([out(1)])
        [held] = await receive_all(owner, ["q"], 1)
        try:
            async with asyncio.timeout(LOST_AFTER * 4):
                got = await other.receive(["q"], 10)
        except TimeoutError:
            got = []
        assert got == [], "a live consumer's message was taken"
        await owner.ack([held])
    finally:
        stop.set()
        await asyncio.gather(*beats)
