"""Fairness across keys on RabbitMQ beyond the contract: key queues on quorum queues, workers
started after the keys were announced, idle key queues retired without losing a message that
races the retirement, dead-letter replay into the key's queue (unique names per test)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.brokers import Delivery, Outgoing
from aiotask.brokers import _rabbitmq_fair as fair
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.settings import Settings
from tests.contract.test_broker_contract import receive_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    Make = Callable[..., RabbitMQBroker]

pytestmark = pytest.mark.amqp


def keyed(key: str, i: int, queue: str = "q") -> Outgoing:
    return Outgoing(queue, f"{key}-{i}".encode(), f"{key}{i}", fair_key=key)


@pytest.fixture
async def make(amqp_url: str, namespace: str) -> AsyncIterator[Make]:
    """Brokers of this test's namespace (settings as keywords); all deleted and closed after."""
    made: list[RabbitMQBroker] = []

    def new(**settings: object) -> RabbitMQBroker:
        conf = Settings(broker_url=amqp_url, key_prefix=namespace, **settings)  # type: ignore[arg-type]
        b = RabbitMQBroker(amqp_url, conf, f"app-{namespace}")
        made.append(b)
        return b

    try:
        yield new
    finally:
        for b in made:
            await b.close()
        cleaner = new()
        await cleaner.connect()
        await cleaner.delete_queue("q")  # its key queues and announcement stream too
        await cleaner.close()


async def drain(broker: RabbitMQBroker, want: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < want:
        batch = await receive_all(broker, ["q"], 1)
        await broker.ack(batch)
        got += batch
    return got


async def test_quorum_key_queues_take_turns_and_dead_letter(make: Make) -> None:
    broker = make(rabbitmq_queue_type="quorum", max_deliveries=3)
    await broker.connect()
    await broker.publish([keyed("a", i) for i in range(20)] + [keyed("b", i) for i in range(3)])
    got = await drain(broker, 6)
    assert sum(1 for d in got if d.message_id.startswith("b")) >= 2, [d.message_id for d in got]
    [d] = await receive_all(broker, ["q"], 1)
    await broker.nack([d], requeue=False, reason="test: poison")
    assert [x.message_id for x in await broker.dead_letters("q")] == [d.message_id]
    (stats,) = await broker.queue_stats(["q"])
    assert stats.dead == 1


async def test_a_worker_started_later_learns_the_existing_keys(make: Make) -> None:
    producer = make()
    await producer.connect()
    await producer.publish([keyed("early", i) for i in range(3)])
    await producer.close()
    worker = make()
    await worker.connect()
    got = await receive_all(worker, ["q"], 3, timeout=10)
    assert sorted(d.message_id for d in got) == ["early0", "early1", "early2"]
    await worker.ack(got)


async def quickly_idle(make: Make) -> tuple[RabbitMQBroker, str, list[Delivery]]:
    """A broker that retires key queues after 0.3 s idle, holding key k's first message."""
    broker = make()
    await broker.connect()
    broker._fair.idle = 0.3
    await broker.publish([keyed("k", 0)])
    held = await receive_all(broker, ["q"], 1)
    return broker, fair.key_queue(broker._names, "q", "k"), held


async def test_idle_key_queue_is_deleted_and_a_later_publish_is_not_lost(make: Make) -> None:
    broker, name, held = await quickly_idle(make)
    await broker.ack(held)
    for _ in range(50):  # the sweeper cancels and deletes it once idle
        if await fair.probe(broker._admin, name) is None:
            break
        await asyncio.sleep(0.1)
    assert await fair.probe(broker._admin, name) is None
    # the publisher still believes it declared: its message returns unroutable, is sent again
    await broker.publish([keyed("k", 1)])
    [again] = await receive_all(broker, ["q"], 1, timeout=10)
    assert again.message_id == "k1"
    await broker.ack([again])


async def test_a_key_queue_with_a_message_held_is_not_retired(make: Make) -> None:
    broker, name, held = await quickly_idle(make)
    await asyncio.sleep(1.0)  # several sweeps: idle by deliveries, but one is unsettled
    assert name in broker._con.keyed
    assert await fair.probe(broker._admin, name) is not None
    await broker.nack(held, requeue=True)  # the copy goes back to the key's queue
    [again] = await receive_all(broker, ["q"], 1, timeout=10)
    assert (again.message_id, again.deliveries) == ("k0", 1)
    await broker.ack([again])


async def test_dead_letter_replay_goes_back_to_the_key_queue(
    make: Make, amqp_url: str, namespace: str
) -> None:
    broker = make()
    await broker.connect()
    app = App("fair-replay", broker=amqp_url, key_prefix=namespace)

    @app.task(name="fair.replay", queue="q", fairness_key="tenant")
    async def job(tenant: str) -> None: ...

    async with app:
        await job.send("acme")
        [d] = await receive_all(broker, ["q"], 1)
        await broker.nack([d], requeue=False, reason="test")
        await broker.close()  # no consumer: the replayed copy stays where it was put
        report = await app.dead_letters.replay(queue="q")
        assert len(report.ids) == 1
        sender = app.broker
        assert isinstance(sender, RabbitMQBroker)
        name = fair.key_queue(sender._names, "q", "acme")
        assert await fair.probe(sender._admin, name) == (1, 0)  # in the key's queue again


async def test_an_idle_quorum_key_queue_is_parked_then_consumed_again(make: Make) -> None:
    """Quorum queues have no conditional delete: the idle key queue stays, unconsumed, and is
    consumed again once it holds a message."""
    broker = make(rabbitmq_queue_type="quorum")
    await broker.connect()
    broker._fair.idle = 0.3
    name = fair.key_queue(broker._names, "q", "k")
    await broker.publish([keyed("k", 0)])
    await broker.ack(await receive_all(broker, ["q"], 1))
    for _ in range(50):
        if name not in broker._con.keyed:
            break
        await asyncio.sleep(0.1)
    assert name not in broker._con.keyed  # parked
    assert await fair.probe(broker._admin, name) == (0, 0)  # kept
    await broker.publish([keyed("k", 1)])
    [again] = await receive_all(broker, ["q"], 1, timeout=fair.PARK_CHECK_S * 3)
    assert again.message_id == "k1"
    await broker.ack([again])
