"""The RabbitMQ floor: raw aiormq and redis-py doing only what an aiotask task on RabbitMQ must.

A send is one persistent, mandatory basic.publish on a durable classic queue, returning once
RabbitMQ confirms it (aiotask's default). The worker consumes with basic.qos = aiotask's
prefetch and, per batch of deliveries, pipelines SET result + PUBLISH in Redis, then acks the
batch with one basic.ack (multiple). A round trip is publish -> confirm, delivery -> SET +
PUBLISH -> ack, and the producer's pub/sub wake-up on a channel it subscribed to once (so no
read after the confirm). No serialization beyond a task id, no retries, no priorities: the
distance to the physical limit on this broker, not a framework.

Worker: `python -m benchmarks.workloads.floor_amqp` (stops on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any

import aiormq
import redis.asyncio as aioredis
from pamqp.commands import Basic

from benchmarks.common import amqp_url, concurrency, ns, redis_url
from benchmarks.workloads.floor import FloorAdapter

PERSISTENT = Basic.Properties(delivery_mode=2)


def names() -> tuple[str, str, str]:
    """(queue, result key prefix, completion channel)"""
    n = ns()
    return n, f"{n}:r:", f"{n}:done"


async def _channel(confirms: bool) -> tuple[aiormq.abc.AbstractConnection, Any]:
    conn = await aiormq.connect(amqp_url())
    channel = await conn.channel(publisher_confirms=confirms)
    await channel.queue_declare(names()[0], durable=True)
    return conn, channel


class FloorAmqpAdapter(FloorAdapter):
    """The Redis floor's adapter with RabbitMQ sends: its result checks (`done_flags`) and its
    round trip (one pub/sub channel subscribed once) are the Redis floor's own."""

    batch_note = "concurrent confirmed publishes"

    def __init__(self) -> None:  # not the Redis floor's: no stream here
        self.r = aioredis.Redis.from_url(redis_url())
        self.queue, self.result_prefix, self.channel = names()
        self.conn: Any = None
        self.amqp: Any = None
        self.pubsub: Any = None

    async def start(self) -> None:
        self.conn, self.amqp = await _channel(confirms=True)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        await super().close()

    async def send(self, kind: str) -> str:
        tid = uuid.uuid4().hex
        await self.amqp.basic_publish(
            f"{tid} {kind}".encode(),
            routing_key=self.queue,
            properties=PERSISTENT,
            mandatory=True,
        )
        return tid

    async def send_many(self, kind: str, count: int) -> list[str]:
        return list(await asyncio.gather(*(self.send(kind) for _ in range(count))))


def make_adapter() -> FloorAmqpAdapter:
    return FloorAmqpAdapter()


async def worker() -> None:
    _, result_prefix, done = names()
    r = aioredis.Redis.from_url(redis_url())
    conn, channel = await _channel(confirms=False)
    await channel.basic_qos(prefetch_count=2 * concurrency())  # as aiotask's --prefetch
    inbox: list[aiormq.abc.DeliveredMessage] = []
    ready = asyncio.Event()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        inbox.append(message)
        ready.set()

    await channel.basic_consume(names()[0], on_message)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await ready.wait()
        ready.clear()
        batch, inbox[:] = inbox[:], []
        if not batch:
            continue
        async with r.pipeline(transaction=False) as pipe:
            for message in batch:
                tid = message.body.split(b" ", 1)[0]
                pipe.set(result_prefix + tid.decode(), b"null", ex=3600)
                pipe.publish(done, tid)
            await pipe.execute()
        await channel.basic_ack(max(m.delivery_tag for m in batch), multiple=True)  # type: ignore[type-var]
    await conn.close()
    await r.aclose()


if __name__ == "__main__":
    asyncio.run(worker())
