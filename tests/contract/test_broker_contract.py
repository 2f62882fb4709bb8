"""The broker delivery contract (aiotask/brokers/base.py), run on every broker."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from aiotask.brokers import Broker, Delivery, Outgoing
from tests.contract.conftest import LEASE, MAX_DELIVERIES, MoreBrokers


def out(i: int, queue: str = "q", **kw: object) -> Outgoing:
    return Outgoing(queue=queue, body=f"body-{i}".encode(), message_id=f"m{i}", **kw)  # type: ignore[arg-type]


async def receive_all(
    broker: Broker, queues: list[str], want: int, timeout: float = 5.0
) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < want:
            got += await broker.receive(queues, want - len(got))
    return got


async def nothing_within(broker: Broker, queues: list[str], seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await broker.receive(queues, 10)
    except TimeoutError:
        return True
    return False


async def test_publish_then_receive_carries_body_and_id(broker: Broker) -> None:
    await broker.publish([out(1)])
    [d] = await receive_all(broker, ["q"], 1)
    assert (d.body, d.message_id, d.queue, d.deliveries) == (b"body-1", "m1", "q", 1)
    await broker.ack([d])


async def test_batch_publish_and_limit(broker: Broker) -> None:
    await broker.publish([out(i) for i in range(50)])
    first = await broker.receive(["q"], 10)
    assert 1 <= len(first) <= 10
    rest = await receive_all(broker, ["q"], 50 - len(first))
    ids = {d.message_id for d in first + rest}
    assert ids == {f"m{i}" for i in range(50)}
    await broker.ack(first + rest)


async def test_receive_waits_for_a_publish(broker: Broker) -> None:
    async def later() -> None:
        await asyncio.sleep(0.2)
        await broker.publish([out(7)])

    task = asyncio.create_task(later())
    started = time.monotonic()
    got = await receive_all(broker, ["q"], 1, timeout=5)
    assert got[0].message_id == "m7"
    assert time.monotonic() - started < 3.0
    await broker.ack(got)
    await task


async def test_acked_message_is_not_redelivered(broker: Broker) -> None:
    await broker.publish([out(1)])
    got = await receive_all(broker, ["q"], 1)
    await broker.ack(got)
    # unacked, it would be back a lease after the receive, which came before: half a lease more
    assert await nothing_within(broker, ["q"], LEASE * 1.5)


async def test_unsettled_message_is_redelivered_after_lease(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    # Without leases (AMQP) the consumer's death is what returns the message: close() it and
    # receive on a fresh instance, as another worker process would.
    leases = broker.capabilities.leases
    await broker.publish([out(1)])
    consumer = broker if leases else await more_brokers.new()
    [first] = await receive_all(consumer, ["q"], 1)
    if not leases:
        await more_brokers.close(consumer)
        consumer = await more_brokers.new()
    [again] = await receive_all(consumer, ["q"], 1, timeout=LEASE * 6)
    assert again.message_id == "m1"
    assert again.deliveries == first.deliveries + 1
    await consumer.ack([again])


async def test_consumer_closing_unsettled_hands_message_to_another(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    await broker.publish([out(1)])
    first = await more_brokers.new()
    [held] = await receive_all(first, ["q"], 1)
    await more_brokers.close(first)  # neither acked nor nacked
    second = await more_brokers.new()
    [again] = await receive_all(second, ["q"], 1, timeout=LEASE * 6)
    assert (again.message_id, again.body) == ("m1", b"body-1")
    assert again.deliveries == held.deliveries + 1
    await second.ack([again])


async def test_extend_keeps_ownership_past_the_lease(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    await broker.publish([out(1)])
    got = await receive_all(broker, ["q"], 1)
    for _ in range(4):
        await asyncio.sleep(LEASE * 0.4)
        await broker.extend(got)
    assert await nothing_within(broker, ["q"], LEASE * 0.4)
    if not broker.capabilities.leases:
        # No lease to lapse: another consumer must not see it while this one lives.
        assert await nothing_within(await more_brokers.new(), ["q"], LEASE * 0.4)
    await broker.ack(got)


async def test_nack_requeue_redelivers_at_once_without_counting(broker: Broker) -> None:
    await broker.publish([out(1)])
    [d] = await receive_all(broker, ["q"], 1)
    await broker.nack([d], requeue=True)
    [again] = await receive_all(broker, ["q"], 1, timeout=LEASE * 0.9)
    assert again.message_id == "m1"
    assert again.deliveries == d.deliveries
    await broker.ack([again])


async def test_nack_without_requeue_dead_letters_with_reason(broker: Broker) -> None:
    await broker.publish([out(1)])
    got = await receive_all(broker, ["q"], 1)
    await broker.nack(got, requeue=False, reason="undecodable: garbage")
    assert await nothing_within(broker, ["q"], LEASE * 1.5)
    [dead] = await broker.dead_letters("q")
    assert dead.message_id == "m1"
    assert dead.body == b"body-1"
    assert "garbage" in dead.reason


async def test_message_over_max_deliveries_is_dead_lettered(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    leases = broker.capabilities.leases
    await broker.publish([out(1)])
    seen = 0
    deadline = time.monotonic() + LEASE * (MAX_DELIVERIES + 3) * 2
    while time.monotonic() < deadline:
        # never settled: the lease lapses each time, or (no leases) the consumer dies
        consumer = broker if leases else await more_brokers.new()
        try:  # a lease and a half: each redelivery comes a lease after the last receive
            async with asyncio.timeout(LEASE * 1.5):
                got = await consumer.receive(["q"], 1)
        except TimeoutError:
            break
        finally:
            if not leases:
                await more_brokers.close(consumer)
        seen += len(got)
    assert seen == MAX_DELIVERIES
    dead = await broker.dead_letters("q")
    assert [d.message_id for d in dead] == ["m1"]
    assert "max_deliveries" in dead[0].reason


async def test_eta_delays_delivery(broker: Broker) -> None:
    await broker.publish([out(1, eta=time.time() + 1.0), out(2)])
    [first] = await receive_all(broker, ["q"], 1)
    assert first.message_id == "m2"
    started = time.monotonic()
    [later] = await receive_all(broker, ["q"], 1, timeout=5)
    assert later.message_id == "m1"
    assert time.monotonic() - started > 0.5
    await broker.ack([first, later])


async def test_priorities_order_a_backlog(broker: Broker) -> None:
    if not broker.capabilities.priorities:
        pytest.skip("this broker does not support priorities (documented)")
    await broker.publish([out(i, priority=p) for i, p in enumerate([0, 9, 5, 1])])
    got = await receive_all(broker, ["q"], 4)
    assert [d.message_id for d in got][:2] == ["m1", "m2"]
    await broker.ack(got)


async def test_several_queues(broker: Broker) -> None:
    await broker.publish([out(1, queue="qa"), out(2, queue="qb")])
    got = await receive_all(broker, ["qa", "qb"], 2)
    assert {d.message_id for d in got} == {"m1", "m2"}
    await broker.ack(got)
    await broker.publish([out(3, queue="q2")])
    assert await nothing_within(broker, ["qa"], 0.3)
    assert await broker.purge("q2") == 1


async def test_purge_counts_and_removes(broker: Broker) -> None:
    await broker.publish([out(i) for i in range(5)])
    assert await broker.purge("q") == 5
    assert await nothing_within(broker, ["q"], 0.3)


async def test_cancelled_waiting_receive_does_not_swallow_a_later_message(broker: Broker) -> None:
    # A receive cancelled while nothing is ready must leave no reader behind (a blocked
    # XREADGROUP, a registered waiter) that takes the next message into limbo: the message
    # comes on its first delivery, not back from a lapsed lease.
    waiter = asyncio.create_task(broker.receive(["q"], 5))
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await broker.publish([out(1)])
    [got] = await receive_all(broker, ["q"], 1, timeout=LEASE * 6)
    assert (got.message_id, got.deliveries) == ("m1", 1)
    await broker.ack([got])


#: Event-loop turns after which a receive is cancelled: lands inside its first awaits (a
#: shielded triage, a thread hand-off, a round trip's write) rather than before it starts.
CANCEL_AFTER_TURNS = range(10)
#: Fractions of an uncancelled receive's duration after which one is cancelled: lands while
#: the server (or the thread) has already handed the messages over, before receive returns.
CANCEL_AFTER_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5)


async def cancel_receives_at_many_points(
    broker: Broker, took: float
) -> list[tuple[float, float, Delivery]]:
    """Start and cancel one receive per cancel point; return what completed receives got,
    each with the monotonic times its receive started and returned."""
    got: list[tuple[float, float, Delivery]] = []
    delays = [("turns", float(n)) for n in CANCEL_AFTER_TURNS]
    delays += [("seconds", took * f) for f in CANCEL_AFTER_FRACTIONS]
    for kind, amount in delays:
        began = time.monotonic()
        waiter = asyncio.create_task(broker.receive(["q"], 2))
        if kind == "turns":
            for _ in range(int(amount)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(amount)
        waiter.cancel()
        # Finished before the cancel landed: a normal delivery. Cancelled: whatever it had
        # taken must come back, which the caller checks.
        with contextlib.suppress(asyncio.CancelledError):
            batch = await waiter
            got += [(began, time.monotonic(), d) for d in batch]
    return got


async def test_cancelled_receive_of_ready_messages_loses_nothing(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    # Messages are published FIRST, so a cancelled receive may already have taken some from
    # the server (claimed rows, entries in our PEL, AMQP deliveries in triage) when the
    # cancellation lands. Those must come back: on lease expiry, or (no leases) when the
    # consumer goes away.
    leases = broker.capabilities.leases
    consumer = broker if leases else await more_brokers.new()
    await broker.publish([out(0)])
    started = time.monotonic()
    warm = await receive_all(consumer, ["q"], 1)
    took = time.monotonic() - started
    await consumer.ack(warm)

    total = 2 * (len(CANCEL_AFTER_TURNS) + len(CANCEL_AFTER_FRACTIONS))
    ids = {f"m{i}" for i in range(1, total + 1)}
    await broker.publish([out(i) for i in range(1, total + 1)])
    timed = await cancel_receives_at_many_points(consumer, took)
    completed = [d for _, _, d in timed]
    await consumer.ack(completed)
    acked = [d.message_id for d in completed]
    # A second copy is fine once a lease has lapsed (the loop holds every delivery until
    # here, and a loaded machine can stretch it past LEASE); within one lease it is a bug.
    # The first copy was taken after its receive began, the second before its receive ended.
    first: dict[str, float] = {}
    for began, ended, d in timed:
        if d.message_id not in first:
            first[d.message_id] = began
            continue
        gap = ended - first[d.message_id]
        assert gap >= LEASE, f"{d.message_id} was handed out twice within {gap:.2f} s"

    if not leases:
        await more_brokers.close(consumer)  # unsettled ones return when the consumer dies
        consumer = await more_brokers.new()
    returned: list[str] = []
    try:
        async with asyncio.timeout(LEASE * 6):
            while set(acked) | set(returned) != ids:
                batch = await consumer.receive(["q"], total)
                await consumer.ack(batch)
                returned += [d.message_id for d in batch]
    except TimeoutError:
        pass
    lost = ids - set(acked) - set(returned)
    assert not lost, f"lost by a cancelled receive: {sorted(lost)}"
    assert not set(acked) & set(returned), "an acked message came back"
    assert len(acked) < total, "every receive completed: no cancellation was exercised"
    assert await nothing_within(consumer, ["q"], LEASE * 1.5)
