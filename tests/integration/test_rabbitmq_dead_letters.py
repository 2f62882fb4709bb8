"""RabbitMQ dead-letter administration beyond the contract: many dead letters, read and
deleted back to back (the requeue of what was held must be complete before the next command),
server-made dead letters without our id header, and the headers our copies carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import pytest

from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.settings import Settings
from tests.contract.test_broker_contract import out, receive_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.amqp


@pytest.fixture
async def broker(amqp_url: str, namespace: str) -> AsyncIterator[RabbitMQBroker]:
    b = RabbitMQBroker(amqp_url, Settings(broker_url=amqp_url, key_prefix=namespace), "app")
    await b.connect()
    try:
        yield b
    finally:
        await b.delete_queue("q")
        await b.close()


async def fill_dead(url: str, namespace: str, count: int, *, with_ids: bool = True) -> None:
    """Put `count` messages straight into q's dead-letter queue (faster than nacking each)."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=False)
        for i in range(count):
            headers: dict[str, object] = {topo.HEADER_REASON: "poison"}
            if with_ids:
                headers[topo.HEADER_DEAD_ID] = f"dead-{i}"
            await channel.default_exchange.publish(
                aio_pika.Message(b"x" * 100, message_id=f"m{i}", headers=headers),  # type: ignore[arg-type]
                routing_key=f"{namespace}.q.dead",
            )
        await channel.close()  # after every publish frame: the queue has them all
    finally:
        await conn.close()


async def test_thousands_listed_then_some_deleted_back_to_back_lose_nothing(
    broker: RabbitMQBroker, amqp_url: str, namespace: str
) -> None:
    await broker.publish([out(0)])  # declares q and q.dead
    [first] = await receive_all(broker, ["q"], 1)
    await broker.ack([first])
    await fill_dead(amqp_url, namespace, 5000)
    dead = await broker.dead_letters("q", 10_000)
    assert [d.message_id for d in dead] == [f"m{i}" for i in range(5000)]  # oldest first
    assert await broker.delete_dead_letters("q", dead[-100:]) == 100
    # at once, no pause: what the delete held is back in the queue, in order
    [stats] = await broker.queue_stats(["q"])
    assert stats.dead == 4900
    again = await broker.dead_letters("q", 10_000)
    assert [d.message_id for d in again] == [f"m{i}" for i in range(4900)]
    assert await broker.delete_dead_letters("q", again[:10]) == 10
    [stats] = await broker.queue_stats(["q"])
    assert stats.dead == 4890


async def test_server_made_dead_letters_are_deleted_oldest_first_by_message_id(
    broker: RabbitMQBroker, amqp_url: str, namespace: str
) -> None:
    await broker.publish([out(0)])
    [first] = await receive_all(broker, ["q"], 1)
    await broker.ack([first])
    await fill_dead(amqp_url, namespace, 3, with_ids=False)
    await fill_dead(amqp_url, namespace, 1, with_ids=False)  # a second m0, newer
    dead = await broker.dead_letters("q")
    assert [d.message_id for d in dead] == ["m0", "m1", "m2", "m0"]
    assert all(d.token is None for d in dead)
    assert await broker.delete_dead_letters("q", [dead[0]]) == 1
    assert [d.message_id for d in await broker.dead_letters("q")] == ["m1", "m2", "m0"]


async def test_our_dead_letters_carry_a_unique_id_and_the_time(broker: RabbitMQBroker) -> None:
    await broker.publish([out(1), out(2)])
    got = await receive_all(broker, ["q"], 2)
    await broker.nack(got, requeue=False, reason="poison")
    dead = await broker.dead_letters("q")
    tokens = {d.token for d in dead}
    assert len(tokens) == 2 and all(isinstance(t, str) and t for t in tokens)
    assert all(d.died_at is not None for d in dead)
