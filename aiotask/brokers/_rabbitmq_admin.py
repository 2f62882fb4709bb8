"""Administration of brokers/rabbitmq.py over a plain admin channel: counts, dead letters by id.

AMQP 0-9-1 can count a queue's ready messages (passive queue.declare) but not its unacked
ones, nor list queues: both need the management plugin, which aiotask does not require. So
`in_flight` and `delayed` (delays live in per-bucket queues nobody can enumerate) are None.
Dead letters are read by holding them unacked on the admin channel (one basic.consume), and
removed by acking the chosen ones; the others go back to the queue when the channel closes
(RabbitMQ keeps their position).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.exceptions import ChannelNotFoundEntity

from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers._rabbitmq_publish import map_errors
from aiotask.brokers.base import DeadLetter, QueueStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

    from aiotask.brokers._rabbitmq_publish import Publisher

    #: opens a plain admin channel (`channel` bound to the broker's publisher)
    OpenChannel = Callable[[], AbstractAsyncContextManager[AbstractChannel]]


#: basic.qos prefetch_count is 16 bits: at most this many messages are held at once.
MAX_PREFETCH = 65535
#: Seconds without a new message after which `hold` stops waiting (another reader has them).
HOLD_IDLE = 2.0
#: Seconds an admin channel may be used before its operation counts as failed.
ADMIN_TIMEOUT = 10.0


async def open_plain(pub: Publisher, url: str) -> AbstractChannel:
    """A plain (non-robust) channel on the publish connection: a 404 closes it, and nothing
    should reopen it."""
    await pub.open()
    conn = pub.conn
    assert conn is not None  # noqa: S101 - set by open()
    admin = aio_pika.Channel(conn, publisher_confirms=False)
    with map_errors(url, "open admin channel"):
        await admin.initialize()
    return admin


@asynccontextmanager
async def channel(pub: Publisher, url: str) -> AsyncIterator[AbstractChannel]:
    """A throwaway admin channel (`open_plain`), closed after use."""
    admin = await open_plain(pub, url)
    try:
        async with asyncio.timeout(ADMIN_TIMEOUT):
            yield admin
    finally:
        if not admin.is_closed:
            await admin.close()


async def purge_named(open_channel: OpenChannel, name: str) -> int:
    """Drop the ready messages of one queue; 0 when it does not exist."""
    try:
        async with open_channel() as ch:
            queue = await ch.declare_queue(name, passive=True)
            return (await queue.purge()).message_count or 0
    except ChannelNotFoundEntity:
        return 0


async def dead_letters(
    open_channel: OpenChannel, names: topo.Names, queue: str, limit: int
) -> list[DeadLetter]:
    """Read without removing: held unacked on an admin channel, then requeued in place."""
    out: list[DeadLetter] = []
    try:
        async with open_channel() as ch:
            held = await hold(ch, names.dead(queue), limit)
            for msg in held.messages:
                reason = topo.dead_reason(msg.headers)
                ident, died_at = topo.dead_identity(msg.headers)
                mid = msg.message_id or ""
                out.append(DeadLetter(mid, msg.body, reason, queue, died_at, ident))
            await held.release(ch)
    except ChannelNotFoundEntity:
        return []
    return out


async def ready_count(open_channel: OpenChannel, name: str) -> int:
    """Ready messages of a queue (passive declare, on a channel of its own: a missing queue
    closes it), 0 when the queue does not exist."""
    try:
        async with open_channel() as channel:
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
    except ChannelNotFoundEntity:
        return 0


async def stats(open_channel: OpenChannel, names: topo.Names, queue: str) -> QueueStats:
    ready = await ready_count(open_channel, names.work(queue))
    dead = await ready_count(open_channel, names.dead(queue))
    return QueueStats(queue, ready, None, None, dead)


class Held:
    """Messages a consumer on the admin channel holds unacked (see `hold`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: oldest first: the messages looked at
        self.messages: list[AbstractIncomingMessage] = []
        #: delivered after `hold` stopped looking (before its cancel took effect)
        self.late: list[AbstractIncomingMessage] = []
        self._acked: set[int] = set()
        #: ready messages when `hold` started
        self.count = 0

    async def ack(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        for msg in messages:
            await msg.ack()
            self._acked.add(id(msg))

    async def release(self, channel: AbstractChannel) -> None:
        """Requeue every message not acked (one nack, multiple), and return once the queue
        counts them again (or after HOLD_IDLE: another reader holds some).

        RabbitMQ requeues asynchronously (9,900 messages took ~0.15 s here) and answers a
        passive declare ahead of the requeue, so without this wait a command run right after
        (list, then replay) would see fewer messages than there are.
        """
        rest = [m for m in [*self.messages, *self.late] if id(m) not in self._acked]
        if not rest:
            return
        last = max(rest, key=lambda m: m.delivery_tag or 0)
        await last.nack(multiple=True, requeue=True)
        expected = self.count - len(self._acked)
        deadline = asyncio.get_running_loop().time() + HOLD_IDLE
        while asyncio.get_running_loop().time() < deadline:
            queue = await channel.declare_queue(self.name, passive=True)
            if int(queue.declaration_result.message_count or 0) >= expected:
                return
            await asyncio.sleep(0.01)


async def hold(
    channel: AbstractChannel,
    name: str,
    limit: int,
    enough: Callable[[AbstractIncomingMessage], bool] | None = None,
) -> Held:
    """Up to `limit` messages of queue `name`, oldest first, delivered to this channel unacked.

    One basic.consume with a prefetch of `limit` (no round trip per message, unlike
    basic.get): every message stays the server's until acked; `Held.release` (or the
    channel's close) puts the others back in their place. Stops at the queue's count when it
    started, at `limit`, when `enough(message)` is true, or after HOLD_IDLE seconds without a
    message (another reader holds the rest).
    """
    held = Held(name)
    queue = await channel.declare_queue(name, passive=True)
    held.count = int(queue.declaration_result.message_count or 0)
    total = min(limit, held.count, MAX_PREFETCH)
    if total <= 0:
        return held
    await channel.set_qos(prefetch_count=total)
    arrived = asyncio.Event()
    done = False

    async def on_message(msg: AbstractIncomingMessage) -> None:
        nonlocal done
        if done:
            held.late.append(msg)
            return
        held.messages.append(msg)
        satisfied = enough is not None and enough(msg)  # called for every message, the last too
        if satisfied or len(held.messages) >= total:
            done = True
        arrived.set()

    tag = await queue.consume(on_message, no_ack=False)
    try:
        while not done:
            arrived.clear()
            try:
                async with asyncio.timeout(HOLD_IDLE):
                    await arrived.wait()
            except TimeoutError:
                break
    finally:
        done = True
        await queue.cancel(tag)
    return held


async def take_dead(channel: AbstractChannel, name: str, dead: Sequence[DeadLetter]) -> int:
    """Ack (remove) exactly these messages of dead-letter queue `name`; the others go back
    to their place.

    Our dead-letter copies carry a unique id header (the DeadLetter's token). One the server
    dead-lettered itself has none: the oldest with its message id goes (the queue is FIFO, so
    a later dead letter of the same id, e.g. a replayed copy that failed again, is kept).
    """
    exact = {d.token for d in dead if isinstance(d.token, str)}
    by_id = Counter(d.message_id for d in dead if not isinstance(d.token, str))
    chosen: list[AbstractIncomingMessage] = []

    def pick(msg: AbstractIncomingMessage) -> bool:
        token, _ = topo.dead_identity(msg.headers)
        mid = msg.message_id or ""
        if token is not None and token in exact:
            exact.discard(token)
        elif token is None and by_id[mid] > 0:
            by_id[mid] -= 1
        else:
            return False
        chosen.append(msg)
        return not exact and not +by_id

    held = await hold(channel, name, MAX_PREFETCH, pick)
    await held.ack(chosen)
    await held.release(channel)
    return len(chosen)


class Prober:
    """Passive declares on one long-lived admin channel (a worker's checks of parked key
    queues): a probe costs one round trip, not a channel open and close. A 404 closes the
    channel, so the next probe opens another; probes take turns (one RPC at a time)."""

    def __init__(self, open_channel: Callable[[], Awaitable[AbstractChannel]]) -> None:
        self._open = open_channel
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self.opened = 0  # channels opened so far (tests)

    async def __call__(self, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of a queue, or None when it does not exist."""
        async with self._lock:
            channel = self._channel
            if channel is None or channel.is_closed:
                self._channel = channel = await self._open()
                self.opened += 1
            try:
                async with asyncio.timeout(ADMIN_TIMEOUT):
                    result = (await channel.declare_queue(name, passive=True)).declaration_result
            except ChannelNotFoundEntity:
                self._channel = None  # the server closed it
                return None
            except BaseException:
                await self.close()  # a timeout or error leaves it in doubt
                raise
            return int(result.message_count or 0), int(result.consumer_count or 0)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
