"""Quorum queues and node lists on the shared RabbitMQ (unique queue names per test).

The short form of the RabbitMQ cluster suite: what a single node can show about quorum queues
(their type, the server's delivery limit, refusals of an existing classic queue) and about a
URL that lists several nodes (the first that answers; the next one after a lost connection,
through a proxy). The 3-node kill -9 test is tests/cluster/test_rabbitmq_cluster_failover.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from aiotask.brokers import Delivery, Outgoing
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.exceptions import BrokerConnectionError, ConfigurationError
from aiotask.settings import Settings
from tests.rabbit_server import FaultProxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.amqp


def out(i: int, queue: str = "q") -> Outgoing:
    return Outgoing(queue=queue, body=f"body-{i}".encode(), message_id=f"m{i}")


def make(url: str, namespace: str, **settings: object) -> RabbitMQBroker:
    conf = Settings(broker_url=url, key_prefix=namespace, **settings)  # type: ignore[arg-type]
    return RabbitMQBroker(url, conf, f"app-{namespace}")


async def receive_n(
    broker: RabbitMQBroker, want: int, queue: str = "q", timeout: float = 10.0
) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < want:
            got += await broker.receive([queue], want - len(got))
    return got


async def publish_when_back(broker: RabbitMQBroker, message: Outgoing) -> None:
    """A publish racing the cut may end "may or may not have been stored": the proxy passes
    nothing after the cut, so it was not, and sending it again cannot duplicate it."""
    async with asyncio.timeout(30):
        while True:
            try:
                await broker.publish([message])
                return
            except BrokerConnectionError:
                await asyncio.sleep(0.2)


@pytest.fixture
async def made(amqp_url: str, namespace: str) -> AsyncIterator[list[RabbitMQBroker]]:
    """Brokers of the test; the test's queues are deleted afterwards (by a fresh broker)."""
    brokers: list[RabbitMQBroker] = []
    try:
        yield brokers
    finally:
        for b in brokers:
            await b.close()
        cleaner = make(amqp_url, namespace)
        for queue in ("q", "orders", "other"):
            await cleaner.delete_queue(queue)
        await cleaner.close()


@pytest.fixture
async def raw(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    conn = await aio_pika.connect(amqp_url)
    try:
        yield conn
    finally:
        await conn.close()


async def declared_with(
    conn: aio_pika.abc.AbstractConnection, name: str, arguments: dict[str, object]
) -> bool:
    """RabbitMQ accepts a re-declare only with the queue's exact arguments (type included)."""
    channel = await conn.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)  # type: ignore[arg-type]
    except ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


async def test_per_queue_quorum_and_the_servers_delivery_limit(
    amqp_url: str, namespace: str, made: list[RabbitMQBroker], raw: aio_pika.abc.AbstractConnection
) -> None:
    settings = {"rabbitmq_queue_types": {"orders": "quorum"}, "max_deliveries": 2}
    producer = make(amqp_url, namespace, **settings)
    made.append(producer)
    await producer.publish([out(1, "orders"), out(2, "other")])
    names = topo.Names(namespace)
    quorum = {
        **topo.work_arguments(names, "orders", "quorum"),
        "x-delivery-limit": 1,  # max_deliveries - 1
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert await declared_with(raw, f"{namespace}.orders", quorum)
    assert await declared_with(raw, f"{namespace}.orders.dead", {"x-queue-type": "quorum"})
    classic = topo.work_arguments(names, "other", "classic")
    assert await declared_with(raw, f"{namespace}.other", classic)  # the default stays classic
    seen = []
    for _ in range(3):  # each consumer dies holding it: RabbitMQ counts every return
        consumer = make(amqp_url, namespace, **settings)
        try:
            async with asyncio.timeout(2.0):
                seen += [d.deliveries for d in await consumer.receive(["orders"], 1)]
        except TimeoutError:
            pass
        await consumer.close()
    assert seen == [1, 2]  # x-delivery-limit = max_deliveries - 1: no third delivery
    [dead] = await producer.dead_letters("orders")
    assert dead.message_id == "m1"
    assert "max_deliveries" in dead.reason and "delivery-limit" in dead.reason
    [d] = await receive_n(producer, 1, "other")
    await producer.ack([d])


async def test_an_existing_classic_queue_is_refused_naming_queue_and_setting(
    amqp_url: str, namespace: str, made: list[RabbitMQBroker]
) -> None:
    classic = make(amqp_url, namespace)
    made.append(classic)
    await classic.publish([out(1, "orders")])
    quorum = make(amqp_url, namespace, rabbitmq_queue_types={"orders": "quorum"})
    made.append(quorum)
    with pytest.raises(ConfigurationError) as info:
        await quorum.publish([out(2, "orders")])
    text = str(info.value)
    assert f"'{namespace}.orders'" in text and "rabbitmq_queue_types['orders']" in text
    assert "guest:guest" not in text
    await quorum.publish([out(3, "other")])  # the probe channel closed, not the publisher's
    consumer = make(amqp_url, namespace, rabbitmq_queue_type="quorum")
    made.append(consumer)
    with pytest.raises(ConfigurationError, match="rabbitmq_queue_type"):
        await consumer.receive(["orders"], 1)
    [d] = await receive_n(classic, 1, "orders")
    assert d.message_id == "m1"
    await classic.ack([d])


async def test_a_changed_max_deliveries_keeps_the_queues_limit_with_a_warning(
    amqp_url: str, namespace: str, made: list[RabbitMQBroker], caplog: pytest.LogCaptureFixture
) -> None:
    first = make(amqp_url, namespace, rabbitmq_queue_type="quorum", max_deliveries=5)
    made.append(first)
    await first.publish([out(1)])
    later = make(amqp_url, namespace, rabbitmq_queue_type="quorum", max_deliveries=3)
    made.append(later)
    with caplog.at_level(logging.WARNING):
        await later.publish([out(2)])
        got = await receive_n(later, 2)
    assert sorted(d.message_id for d in got) == ["m1", "m2"]
    await later.ack(got)
    assert "x-delivery-limit=4, not 2" in caplog.text


async def test_a_node_list_uses_the_first_that_answers_then_the_next_after_a_loss(
    amqp_url: str, namespace: str, made: list[RabbitMQBroker]
) -> None:
    host = amqp_url.split("@", 1)[1].split("/", 1)[0]  # 127.0.0.1:5672
    proxy = FaultProxy(int(host.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        dead = "127.0.0.1:1"  # nothing listens: skipped at connect
        url = f"amqp://guest:guest@{dead},127.0.0.1:{proxy.port},{host}/"
        b = make(url, namespace, broker_unreachable_timeout=30.0)
        made.append(b)
        await b.publish([out(1)])
        [d1] = await receive_n(b, 1)
        await b.ack([d1])
        through_proxy = proxy.forwarded
        assert through_proxy > 0  # both connections went to the second node (the proxy)
        proxy.refuse = True
        proxy.cut()  # the node "dies": the next attempt goes on to the third entry
        await publish_when_back(b, out(2))
        got = await receive_n(b, 1, timeout=30)
        assert {d.message_id for d in got} == {"m2"}
        await b.ack(got)
        assert proxy.forwarded == through_proxy  # nothing went through the dead node since
    finally:
        await proxy.close()
