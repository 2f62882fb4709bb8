"""The monitoring event stream of brokers/rabbitmq.py: a topic exchange, nothing stored.

Each record (aiotask.events packs one flush of an emitter, up to 1500 events, per record) is one
transient message to the topic exchange `{prefix}.events`, routing key `events`: one publish
and one confirm per flush, not per event (a worker emits about three events per task). It is
published without `mandatory`: with nobody following, the server drops it, which is the
cap (nothing accumulates). A follower binds an exclusive, auto-delete, server-named queue with
`#`, capped at EVENTS_CAP records (x-max-length, oldest dropped), so a slow follower cannot
grow the server's memory.
"""

from __future__ import annotations

import asyncio
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
    """One message per record, concurrently (one round trip of confirms); the server drops
    them when nobody follows."""
    await asyncio.gather(
        *(
            exchange.publish(
                aio_pika.Message(
                    record,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=ROUTING_KEY,
                mandatory=False,
            )
            for record in batch
        )
    )


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
                yield message.body

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
