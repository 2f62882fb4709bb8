"""amqp:// in Celery's layout (`celery_compat`): the queues, exchanges and messages kombu uses.

A queue `q` is what Celery declares for it: a durable direct exchange `q`, a durable queue `q`
bound with routing key `q` (the default queue is `celery`), no queue arguments. A message is
published and consumed with its kombu headers and properties (protocol v2 keeps the task's
metadata there), so Celery workers and aiotask workers consume the same queue side by side.

Byte-level like every broker: it carries kombu's transport envelope (celery_compat.envelope)
between the wire and the codec above; it never reads a task header. A message's eta travels in
its headers, as with Celery, and the worker holds it until due (capabilities.native_delay is
False). Dead letters go to a durable queue `q.dead` with the reason in a header.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.exceptions import ChannelClosed

from aiotask.brokers._rabbitmq_publish import map_errors, open_connection
from aiotask.brokers.base import BrokerCapabilities, DeadLetter, Delivery, Outgoing, QueueStats
from aiotask.celery_compat import envelope
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aio_pika.abc import (
        AbstractChannel,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractRobustConnection,
    )

    from aiotask.settings import Settings

REASON_HEADER = "x-aiotask-reason"
DEAD_SUFFIX = ".dead"


def _plain(value: Any) -> Any:
    """AMQP header values -> JSON values (long strings may arrive as bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class KombuAMQPBroker:
    """A Broker on RabbitMQ with kombu's topology and message properties."""

    capabilities = BrokerCapabilities(
        priorities=True, max_priority=9, native_delay=False, leases=False
    )

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        self._url = url
        self._settings = settings
        self._app_name = app_name
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractChannel | None = None
        self._sub: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consuming: set[str] = set()
        self._ready: deque[Delivery] = deque()
        self._wake = asyncio.Event()

    async def connect(self) -> None:
        if self._conn is not None:
            return
        self._conn = await open_connection(self._url, self._settings, self._app_name, "celery")
        with map_errors(self._url, "open a channel"):
            self._pub = await self._conn.channel(publisher_confirms=True)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self._pub = self._sub = None
        self._exchanges.clear()
        self._consuming.clear()
        self._ready.clear()  # unacked: the server requeues them when the connection closes
        if conn is not None:
            await conn.close()

    def _channel(self) -> AbstractChannel:
        if self._pub is None:
            raise BrokerConnectionError("the RabbitMQ broker is not connected")
        return self._pub

    async def _declare(self, channel: AbstractChannel, queue: str) -> AbstractExchange:
        """Celery's declaration of `queue`: same-named direct exchange, bound by its name."""
        exchange = self._exchanges.get(queue) if channel is self._pub else None
        if exchange is not None:
            return exchange
        with map_errors(self._url, f"declare queue {queue!r}"):
            exchange = await channel.declare_exchange(
                queue, aio_pika.ExchangeType.DIRECT, durable=True
            )
            declared = await channel.declare_queue(queue, durable=True)
            await declared.bind(exchange, routing_key=queue)
        if channel is self._pub:
            self._exchanges[queue] = exchange
        return exchange

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        channel = self._channel()
        for out in batch:
            env = envelope.loads(out.body)
            exchange = await self._declare(channel, out.queue)
            message = aio_pika.Message(
                env.body,
                headers=env.headers,
                content_type=env.content_type,
                content_encoding=env.content_encoding,
                correlation_id=env.correlation_id,
                reply_to=env.reply_to or None,
                priority=env.priority or out.priority or None,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            with map_errors(self._url, f"publish to {out.queue!r}"):
                await exchange.publish(message, routing_key=out.queue)

    async def _consume(self, queues: Sequence[str]) -> None:
        if self._conn is None:
            raise BrokerConnectionError("the RabbitMQ broker is not connected")
        if self._sub is None:
            with map_errors(self._url, "open a channel"):
                self._sub = await self._conn.channel()
                await self._sub.set_qos(prefetch_count=self._settings.effective_prefetch)
        for queue in queues:
            if queue in self._consuming:
                continue
            await self._declare(self._sub, queue)
            with map_errors(self._url, f"consume {queue!r}"):
                declared = await self._sub.get_queue(queue, ensure=False)
                await declared.consume(functools.partial(self._arrived, queue))
            self._consuming.add(queue)

    async def _arrived(self, queue: str, message: AbstractIncomingMessage) -> None:
        env = envelope.Envelope(
            body=message.body,
            headers=_plain(dict(message.headers or {})),
            content_type=message.content_type or envelope.JSON,
            content_encoding=message.content_encoding or "utf-8",
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            priority=message.priority or 0,
            exchange=message.exchange or "",
            routing_key=queue,
            delivery_tag=str(message.delivery_tag),
        )
        ident = str((message.headers or {}).get("id") or message.correlation_id or "")
        self._ready.append(
            Delivery(env.dumps(), queue, _plain(ident), 2 if message.redelivered else 1, message)
        )
        self._wake.set()

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        await self._consume(queues)
        while not self._ready:
            self._wake.clear()
            await self._wake.wait()
        out: list[Delivery] = []
        while self._ready and len(out) < limit:
            out.append(self._ready.popleft())
        return out

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await _settle(d, "ack")

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        for d in deliveries:
            if requeue:
                await _settle(d, "requeue")
                continue
            message: AbstractIncomingMessage = d.token  # type: ignore[assignment]
            dead = aio_pika.Message(
                message.body,
                headers={**(message.headers or {}), REASON_HEADER: reason or "dead-lettered"},
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                correlation_id=message.correlation_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            name = d.queue + DEAD_SUFFIX
            channel = self._channel()
            with map_errors(self._url, f"dead-letter to {name!r}"):
                await channel.declare_queue(name, durable=True)
                await channel.default_exchange.publish(dead, routing_key=name)
            await _settle(d, "ack")  # copy confirmed first: a crash duplicates, never loses

    async def heartbeat(self) -> None:
        """The server notices a dead consumer itself (the connection closes)."""

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """No leases on AMQP: a held message stays with this consumer until it closes."""

    async def purge(self, queue: str) -> int:
        channel = self._channel()
        await self._declare(channel, queue)
        with map_errors(self._url, f"purge {queue!r}"):
            declared = await channel.get_queue(queue, ensure=False)
            result = await declared.purge()
        return int(result.message_count or 0)

    async def _dead(self, queue: str, limit: int) -> list[tuple[AbstractIncomingMessage, Any]]:
        """Fetch up to `limit` dead letters unacked on a fresh channel (closing it puts them
        back); returns them with that channel's queue object."""
        if self._conn is None:
            raise BrokerConnectionError("the RabbitMQ broker is not connected")
        channel = await self._conn.channel()
        declared = await channel.declare_queue(queue + DEAD_SUFFIX, durable=True)
        found = []
        for _ in range(limit):
            got = await declared.get(fail=False, no_ack=False)
            if got is None:
                break
            found.append((got, channel))
        if not found:
            await channel.close()
        return found

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        found = await self._dead(queue, limit)
        letters = [_dead_letter(queue, m) for m, _ in found]
        if found:
            await found[0][1].close()
        return letters

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        wanted = {(d.message_id, d.body) for d in dead}
        found = await self._dead(queue, max(len(dead) * 2, 100))
        removed = 0
        for message, _ in found:
            letter = _dead_letter(queue, message)
            if (letter.message_id, letter.body) in wanted:
                await message.ack()
                removed += 1
        if found:
            await found[0][1].close()
        return removed

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        if self._conn is None:
            raise BrokerConnectionError("the RabbitMQ broker is not connected")
        stats = []
        for queue in queues:
            counts = []
            for name in (queue, queue + DEAD_SUFFIX):
                channel = await self._conn.channel()
                try:
                    declared = await channel.declare_queue(name, passive=True)
                    counts.append(int(declared.declaration_result.message_count or 0))
                except ChannelClosed:
                    counts.append(0)
                finally:
                    if not channel.is_closed:
                        await channel.close()
            stats.append(QueueStats(queue, counts[0], None, None, counts[1]))
        return stats

    async def known_queues(self) -> list[str]:
        return sorted(set(self._exchanges) | self._consuming)


def _dead_letter(queue: str, message: AbstractIncomingMessage) -> DeadLetter:
    headers = _plain(dict(message.headers or {}))
    env = envelope.Envelope(
        body=message.body,
        headers={k: v for k, v in headers.items() if k != REASON_HEADER},
        content_type=message.content_type or envelope.JSON,
        correlation_id=message.correlation_id,
        routing_key=queue,
        delivery_tag="dead",  # stable: the same letter reads back as the same bytes
    )
    return DeadLetter(
        str(headers.get("id") or message.correlation_id or ""),
        env.dumps(),
        str(headers.get(REASON_HEADER) or ""),
        queue,
        token=base64.b64encode(message.body).decode(),
    )


async def _settle(delivery: Delivery, how: str) -> None:
    message: AbstractIncomingMessage = delivery.token  # type: ignore[assignment]
    try:
        if how == "ack":
            await message.ack()
        else:
            await message.nack(requeue=True)
    except Exception as exc:  # a stale tag after a reconnect: the server redelivers it
        if isinstance(exc, asyncio.CancelledError):
            raise
