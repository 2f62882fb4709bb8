"""The `confirm=False` call option on RabbitMQ: latency over the guarantee, failures logged."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.exceptions import ConfigurationError
from tests.integration.test_rabbitmq_broker import (  # fixtures and helpers, no tests
    broker,
    brokers,
    make,
    out,
    raw,
    receive_n,
)

if TYPE_CHECKING:
    import aio_pika

    from aiotask.brokers.rabbitmq import RabbitMQBroker

pytestmark = pytest.mark.amqp
__all__ = ["broker", "brokers", "raw"]


async def test_unconfirmed_publishes_arrive_in_order_of_priority(broker: RabbitMQBroker) -> None:
    await broker.publish([out(0)])  # declares the queue (confirmed)
    await broker.publish([out(i, confirm=False, priority=i % 3) for i in range(1, 21)])
    got = await receive_n(broker, 21)
    assert sorted(d.message_id for d in got) == sorted(f"m{i}" for i in range(21))
    await broker.ack(got)


async def test_an_unconfirmed_unroutable_publish_is_logged_not_raised(
    amqp_url: str,
    namespace: str,
    broker: RabbitMQBroker,
    raw: aio_pika.abc.AbstractChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await broker.publish([out(1)])
    await raw.queue_delete(f"{namespace}.q")  # gone behind the broker's back
    with caplog.at_level(logging.WARNING, logger="aiotask.brokers._rabbitmq_publish"):
        await broker.publish([out(2, confirm=False)])  # returns before RabbitMQ answers
        await broker.close()  # waits for the outstanding confirm, which reports the return
    assert any(
        "message m2 failed" in r.getMessage() and "unroutable" in r.getMessage()
        for r in caplog.records
    )
    again = make(amqp_url, namespace)  # the fixture deletes the queue through a fresh one
    await again.connect()
    await again.publish([out(3)])
    await again.close()


async def test_apply_async_confirm_false_sends_and_signatures_refuse_it(
    amqp_url: str, namespace: str, brokers: list[RabbitMQBroker]
) -> None:
    app = App("unconfirmed", broker=amqp_url, key_prefix=namespace, default_queue="q")

    @app.task(name="t.echo")
    async def echo(x: int) -> int:
        return x

    async with app:
        sent = await echo.apply_async((1,), confirm=False)
        got = await app.send_task("t.echo", [2], confirm=False)
        with pytest.raises(ConfigurationError, match="confirm"):
            await echo.s(3).set(confirm=False).apply_async()
        consumer = make(amqp_url, namespace)
        brokers.append(consumer)  # deletes the queue afterwards
        await consumer.connect()
        ids = {d.message_id for d in await receive_n(consumer, 2)}
        assert ids == {sent.id, got.id}
