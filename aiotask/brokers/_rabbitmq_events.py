"""The monitoring event stream of brokers/rabbitmq.py: a topic exchange, nothing stored.

One flush of an emitter is one transient message to the topic exchange `{prefix}.events`,
routing key `events`: its body is the batch's events, JSON objects separated by newlines (one
publish and one confirm per flush, not per event: a worker emits about three events per task).
It is published without `mandatory`: with nobody following, the server drops it, which is the
cap (nothing accumulates). A follower binds an exclusive, auto-delete, server-named queue with
`#`, capped at EVENTS_CAP messages (x-max-length, oldest dropped), so a slow follower cannot
grow the server's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika

from aiotask.brokers._rabbitmq_publish import map_errors, open_connection
from aiotask.brokers.base import EVENTS_CAP

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence

    from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

    from aiotask.settings import Settings


def exchange_name(prefix: str) -> str:
    return f"{prefix}.events"


#: The routing key of every batch (the exchange is a topic one, so filters can come later).
ROUTING_KEY = "events"


async def declare(channel: AbstractChannel, prefix: str) -> AbstractExchange:
    return await channel.declare_exchange(
        exchange_name(prefix), aio_pika.ExchangeType.TOPIC, durable=True
    )


async def publish(exchange: AbstractExchange, batch: Sequence[bytes]) -> None:
    """The batch as one message (confirmed); dropped by the server when nobody follows."""
    message = aio_pika.Message(
        b"\n".join(batch),
        content_type="application/x-ndjson",
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
    )
    await exchange.publish(message, routing_key=ROUTING_KEY, mandatory=False)


class Follower:
    """One follower's connection, channel and bound queue (see the module docstring)."""

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        self._url = url
        self._settings = settings
        self._app_name = app_name
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None

    async def open(self) -> None:
        conn = await open_connection(self._url, self._settings, self._app_name, "events")
        self._conn = conn
        with map_errors(self._url, "follow events"):
            channel = await conn.channel()
            exchange = await declare(channel, self._settings.key_prefix)
            queue = await channel.declare_queue(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": EVENTS_CAP},
            )
            await queue.bind(exchange, routing_key="#")
        self._queue = queue

    async def feed(self) -> AsyncGenerator[bytes, None]:
        assert self._queue is not None  # noqa: S101 - open() ran
        async with self._queue.iterator(no_ack=True) as messages:
            async for message in messages:
                for body in message.body.split(b"\n"):
                    if body:
                        yield body

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
