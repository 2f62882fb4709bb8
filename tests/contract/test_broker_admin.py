"""The broker administration primitives (queue_stats, known_queues, dead letters by id), run
on every broker; they back `aiotask queues`, `aiotask dlq` and `app.dead_letters`."""

from __future__ import annotations

import asyncio
import time

from aiotask.brokers import Broker, Outgoing, QueueStats
from tests.contract.conftest import LEASE, MAX_DELIVERIES, MoreBrokers
from tests.contract.test_broker_contract import out, receive_all


async def dead_letter(broker: Broker, queue: str, count: int, reason: str = "poison") -> None:
    """Publish `count` messages to `queue` and dead-letter each one through a consumer."""
    await broker.publish([out(i, queue=queue) for i in range(1, count + 1)])
    got = await receive_all(broker, [queue], count)
    await broker.nack(got, requeue=False, reason=reason)


async def test_queue_stats_before_and_after_consuming(broker: Broker) -> None:
    amqp = not broker.capabilities.leases
    later = time.time() + 60
    await broker.publish([out(i) for i in range(1, 5)] + [out(5, eta=later)])
    [before] = await broker.queue_stats(["q"])
    assert before.queue == "q"
    assert before.ready == 4  # a delayed message is not ready (nor, on Redis, its wake-up)
    assert before.dead == 0
    if amqp:  # AMQP cannot count unacked messages nor its per-bucket delay queues
        assert (before.delayed, before.in_flight) == (None, None)
    else:
        assert (before.delayed, before.in_flight) == (1, 0)

    [first] = await receive_all(broker, ["q"], 1)
    await broker.nack([first], requeue=False, reason="poison")
    [held] = await receive_all(broker, ["q"], 1)
    [after] = await broker.queue_stats(["q"])
    assert after.dead == 1
    if amqp:  # the consumer's prefetch holds the rest unacked: not ready on the server
        assert after.ready <= 2
    else:
        assert after == QueueStats("q", 2, 1, 1, 1)
    await broker.ack([held])


async def test_queue_stats_of_a_queue_never_used_are_zero(broker: Broker) -> None:
    [stats] = await broker.queue_stats(["q2"])
    assert (stats.queue, stats.ready, stats.dead) == ("q2", 0, 0)
    assert stats.delayed in (0, None) and stats.in_flight in (0, None)
    assert await broker.queue_stats([]) == []


async def test_known_queues_names_queues_with_messages_or_dead_letters(broker: Broker) -> None:
    await broker.publish([out(1, queue="qa")])
    await dead_letter(broker, "qb", 1)
    assert set(await broker.known_queues()) == {"qa", "qb"}


async def test_dead_letters_carry_their_queue_and_time(broker: Broker) -> None:
    started = time.time()
    await dead_letter(broker, "q", 2)
    dead = await broker.dead_letters("q")
    assert [(d.message_id, d.body, d.queue, d.reason) for d in dead] == [
        ("m1", b"body-1", "q", "poison"),
        ("m2", b"body-2", "q", "poison"),
    ]
    for d in dead:  # RabbitMQ does not record when
        assert d.died_at is None or started - 1 <= d.died_at <= time.time() + 1


async def test_delete_dead_letters_removes_those_listed_and_keeps_the_others_in_order(
    broker: Broker,
) -> None:
    await dead_letter(broker, "q", 4)
    listed = await broker.dead_letters("q")
    chosen = [d for d in listed if d.message_id in ("m2", "m4")]
    assert await broker.delete_dead_letters("q", chosen) == 2
    assert [d.message_id for d in await broker.dead_letters("q")] == ["m1", "m3"]
    assert await broker.delete_dead_letters("q", []) == 0
    [stats] = await broker.queue_stats(["q"])
    assert stats.dead == 2


async def test_delete_dead_letters_of_a_queue_never_used_is_zero(broker: Broker) -> None:
    await dead_letter(broker, "q", 1)
    assert await broker.delete_dead_letters("q2", await broker.dead_letters("q")) == 0
    assert await broker.dead_letters("q2") == []


async def test_a_newer_dead_letter_of_the_same_id_survives_the_delete(broker: Broker) -> None:
    """Replay publishes, a fast worker rejects the copy again, then replay deletes: only the
    entry it listed goes, the new one (the message's only trace) stays."""
    await dead_letter(broker, "q", 1, reason="first")
    [old] = await broker.dead_letters("q")
    await broker.publish([Outgoing("q", old.body, old.message_id)])
    got = await receive_all(broker, ["q"], 1)
    await broker.nack(got, requeue=False, reason="second")
    assert await broker.delete_dead_letters("q", [old]) == 1
    assert [(d.message_id, d.reason) for d in await broker.dead_letters("q")] == [("m1", "second")]
    assert await broker.delete_dead_letters("q", [old]) == 0  # already gone: nothing else goes
    assert len(await broker.dead_letters("q")) == 1


async def test_a_copy_of_an_exhausted_message_is_delivered_from_one_again(
    broker: Broker, more_brokers: MoreBrokers
) -> None:
    """What replay does above the seam: publish the dead letter's bytes, then delete it; the
    copy starts a fresh delivery count (here after max_deliveries lapsed deliveries)."""
    leases = broker.capabilities.leases
    await broker.publish([out(1)])
    deadline = time.monotonic() + LEASE * (MAX_DELIVERIES + 3) * 2
    while not await broker.dead_letters("q") and time.monotonic() < deadline:
        consumer = broker if leases else await more_brokers.new()
        try:  # never settled: the lease lapses each time, or (no leases) the consumer dies
            async with asyncio.timeout(LEASE * 2.5):
                await consumer.receive(["q"], 1)
        except TimeoutError:
            pass
        finally:
            if not leases:
                await more_brokers.close(consumer)
    [dead] = await broker.dead_letters("q")
    assert "max_deliveries" in dead.reason
    await broker.publish([Outgoing("q", dead.body, dead.message_id)])
    assert await broker.delete_dead_letters("q", [dead]) == 1
    [again] = await receive_all(broker, ["q"], 1)
    assert (again.message_id, again.body, again.deliveries) == ("m1", b"body-1", 1)
    await broker.ack([again])
    assert await broker.dead_letters("q") == []
