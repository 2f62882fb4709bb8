"""Fairness across keys (`Outgoing.fair_key`, `capabilities.fairness`), on every broker that
claims it: round-robin serving, and the delivery contract kept for keyed messages (leases,
hand-back, nack, dead letters, delays, takeover, stats and purge)."""

from __future__ import annotations

import asyncio
import time

import pytest

from aiotask.brokers import Broker, Delivery, Outgoing
from tests.contract.conftest import LEASE, MAX_DELIVERIES, MoreBrokers
from tests.contract.test_broker_contract import nothing_within, receive_all
from tests.contract.test_broker_liveness import (
    LONG_LEASE,
    LOST_AFTER,
    _beat,
    pair,  # noqa: F401 - the fixture, used by name
)


@pytest.fixture(autouse=True)
def _fair_only(broker: Broker) -> None:
    if not broker.capabilities.fairness:
        pytest.skip(f"{type(broker).__name__} serves a queue FIFO (capabilities.fairness)")


def keyed(key: str, i: int, **kw: object) -> Outgoing:
    return Outgoing("q", f"{key}-{i}".encode(), f"{key}{i}", fair_key=key, **kw)  # type: ignore[arg-type]


def keys_of(got: list[Delivery]) -> list[str]:
    return [d.message_id.rstrip("0123456789") for d in got]


async def drain(broker: Broker, want: int, step: int) -> list[Delivery]:
    """Receive `want` messages `step` at a time (acking each batch), in delivery order."""
    got: list[Delivery] = []
    while len(got) < want:
        batch = await receive_all(broker, ["q"], min(step, want - len(got)))
        await broker.ack(batch)
        got += batch
    return got


@pytest.mark.parametrize("step", [1, 4])
async def test_keys_take_turns_whatever_their_backlog(broker: Broker, step: int) -> None:
    await broker.publish([keyed("a", i) for i in range(20)])
    await broker.publish([keyed("b", i) for i in range(3)])
    await broker.publish([Outgoing("q", b"plain", "u0")])
    got = await drain(broker, 24, step)
    order = keys_of(got)
    # b's 3 and the unkeyed one are all served within the first 3 turns of each key
    assert max(i for i, k in enumerate(order) if k in ("b", "u")) < 9, order
    # within a key, first in first out
    assert [d.message_id for d in got if d.message_id.startswith("a")] == [
        f"a{i}" for i in range(20)
    ]


async def test_concurrent_consumers_take_turns_across_keys(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    """Three consumers claiming one message at a time, at once: b's 4 are served within the
    first turns (not after a's 40), and no message goes to two consumers."""
    await broker.publish([keyed("a", i) for i in range(40)])
    await broker.publish([keyed("b", i) for i in range(4)])
    consumers = [broker, await more_brokers.new(), await more_brokers.new()]
    seen: list[Delivery] = []

    async def consume(consumer: Broker) -> None:
        while len(seen) < 44:
            try:
                async with asyncio.timeout(0.5):
                    got = await consumer.receive(["q"], 1)
            except TimeoutError:
                continue
            seen.extend(got)
            await consumer.ack(got)

    async with asyncio.timeout(30):
        await asyncio.gather(*(consume(c) for c in consumers))
    order = keys_of(seen)
    assert len({d.message_id for d in seen}) == len(seen) == 44, order
    # in turn: b's 4 within a's first 4-5; slack for the consumers' racing appends
    assert max(i for i, k in enumerate(order) if k == "b") < 14, order


async def test_priority_orders_within_a_key(broker: Broker) -> None:
    if not broker.capabilities.priorities:
        pytest.skip("no priorities")
    await broker.publish([keyed("a", 0), keyed("a", 1, priority=9), keyed("b", 0)])
    got = await drain(broker, 3, 3)
    assert [d.message_id for d in got if d.message_id.startswith("a")] == ["a1", "a0"]


async def test_a_blocked_receive_wakes_for_a_keyed_publish(broker: Broker) -> None:
    async def later() -> None:
        await asyncio.sleep(0.3)
        await broker.publish([keyed("a", 1)])

    task = asyncio.create_task(later())
    [d] = await receive_all(broker, ["q"], 1, timeout=5)
    assert (d.message_id, d.body, d.deliveries) == ("a1", b"a-1", 1)
    await broker.ack([d])
    await task


async def test_keyed_unsettled_is_redelivered_counted(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    leases = broker.capabilities.leases
    await broker.publish([keyed("a", 1)])
    consumer = broker if leases else await more_brokers.new()
    [first] = await receive_all(consumer, ["q"], 1)
    if not leases:
        await more_brokers.close(consumer)
        consumer = await more_brokers.new()
    [again] = await receive_all(consumer, ["q"], 1, timeout=LEASE * 6)
    assert (again.message_id, again.deliveries) == ("a1", first.deliveries + 1)
    await consumer.ack([again])
    assert await nothing_within(consumer, ["q"], LEASE * 2.5)


async def test_keyed_extend_keeps_ownership(broker: Broker) -> None:
    await broker.publish([keyed("a", 1)])
    got = await receive_all(broker, ["q"], 1)
    for _ in range(4):
        await asyncio.sleep(LEASE * 0.4)
        await broker.extend(got)
    assert await nothing_within(broker, ["q"], LEASE * 0.4)
    await broker.ack(got)


async def test_keyed_nack_requeue_and_dead_letter(broker: Broker) -> None:
    await broker.publish([keyed("a", 1), keyed("b", 1)])
    got = await receive_all(broker, ["q"], 2)
    a = next(d for d in got if d.message_id == "a1")
    b = next(d for d in got if d.message_id == "b1")
    await broker.nack([a], requeue=True)
    await broker.nack([b], requeue=False, reason="test: rejected")
    [again] = await receive_all(broker, ["q"], 1, timeout=LEASE * 0.9)
    assert (again.message_id, again.deliveries) == ("a1", a.deliveries)
    await broker.ack([again])
    [dead] = await broker.dead_letters("q")
    assert (dead.message_id, dead.body) == ("b1", b"b-1")
    assert "rejected" in dead.reason


async def test_keyed_counted_nack_reaches_max_deliveries(broker: Broker) -> None:
    await broker.publish([keyed("a", 1)])
    for n in range(1, MAX_DELIVERIES + 1):
        [d] = await receive_all(broker, ["q"], 1)
        assert d.deliveries == n
        await broker.nack([d], requeue=True, counted=True)
    deadline = time.monotonic() + 5.0
    dead = await broker.dead_letters("q")
    while not dead and time.monotonic() < deadline:
        assert await nothing_within(broker, ["q"], 0.3)
        dead = await broker.dead_letters("q")
    assert [d.message_id for d in dead] == ["a1"]


async def test_closing_consumer_hands_keyed_messages_to_another(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    await broker.publish([keyed("a", 1), keyed("b", 1)])
    first = await more_brokers.new()
    held = await receive_all(first, ["q"], 2)
    await more_brokers.close(first)
    second = await more_brokers.new()
    again = await receive_all(second, ["q"], 2, timeout=LEASE * 6)
    assert sorted(d.message_id for d in again) == ["a1", "b1"]
    assert {d.deliveries for d in again} == {held[0].deliveries + 1}
    await second.ack(again)


async def test_keyed_eta_delays_and_keeps_the_key(broker: Broker) -> None:
    eta = time.time() + 2.0  # room for a loaded machine: the first drain ends well before
    await broker.publish([keyed("b", 0, eta=eta)])
    await broker.publish([keyed("a", i) for i in range(10)])
    first = await drain(broker, 4, 2)
    assert "b" not in keys_of(first)  # not before its eta
    await asyncio.sleep(eta - time.time() + 0.5)  # due, with time for the broker to move it
    rest = await drain(broker, 7, 2)
    # once due, b takes its turn ahead of a's remaining backlog
    assert "b" in keys_of(rest)[:3], keys_of(rest)


async def test_keyed_messages_in_stats_and_purge(broker: Broker) -> None:
    await broker.publish([keyed("a", i) for i in range(4)] + [keyed("b", 0)])
    await broker.publish([Outgoing("q", b"x", "u0"), keyed("c", 0, eta=time.time() + 60)])
    (stats,) = await broker.queue_stats(["q"])
    assert stats.ready == 6
    assert stats.delayed in (1, None)
    held = await receive_all(broker, ["q"], 2)
    (stats,) = await broker.queue_stats(["q"])
    if stats.in_flight is None:  # AMQP: the consumer's prefetch holds the rest unacked
        assert stats.ready <= 4
    else:
        assert (stats.ready, stats.in_flight) == (4, 2)
    await broker.ack(held)
    assert await broker.purge("q") >= 4
    assert await nothing_within(broker, ["q"], 0.5)


async def test_lost_consumer_keyed_work_is_taken_over_fast(
    pair: tuple[Broker, Broker],  # noqa: F811 - the imported fixture
) -> None:
    dead, alive = pair
    if not dead.capabilities.fairness:
        pytest.skip("no fairness")
    await dead.heartbeat()
    await dead.publish([keyed("a", 1), keyed("b", 1)])
    held = await receive_all(dead, ["q"], 2)
    stop = asyncio.Event()
    beating = asyncio.create_task(_beat(alive, stop))
    started = time.monotonic()
    try:
        got = await receive_all(alive, ["q"], 2, timeout=LOST_AFTER * 8)
    finally:
        stop.set()
        await beating
    assert sorted(d.message_id for d in got) == sorted(d.message_id for d in held)
    assert {d.deliveries for d in got} == {2}
    assert time.monotonic() - started < LONG_LEASE / 4
    await alive.ack(got)


async def test_keyed_message_taken_over_by_lease_is_handed_back_on_close(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    if not broker.capabilities.leases:
        pytest.skip("no leases")
    await broker.publish([keyed("a", 1)])
    [first] = await receive_all(broker, ["q"], 1)
    taker = await more_brokers.new()
    [taken] = await receive_all(taker, ["q"], 1, timeout=LEASE * 6)  # the lease lapsed
    assert (taken.message_id, taken.deliveries) == ("a1", first.deliveries + 1)
    await more_brokers.close(taker)  # hands it back: at once, not after another lease
    [again] = await receive_all(broker, ["q"], 1, timeout=LEASE * 0.9)
    assert (again.message_id, again.deliveries) == ("a1", taken.deliveries + 1)
    await broker.ack([again])
