"""The consume side of brokers/rabbitmq.py: one robust connection, basic.qos, a local buffer.

The connection opens on the first `start` (a producer-only App holds one connection). Pushed
deliveries go into a priority heap per queue that the broker's `receive` drains; the broker
decides what each delivery becomes (triage), this module only holds and hands them out.

Consumers are registered on aio-pika's robust channel's underlying aiormq channel (see
`_rabbitmq_delivery.Incoming` for why): aio-pika does not restore them, so when the robust
channel reopens (a reconnect, or a channel error) or the server cancels one (its queue was
deleted), they are forgotten and the next `start` — every `receive` calls it — declares and
consumes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from aiotask import _hooks
from aiotask._time import monotonic
from aiotask._urls import redact
from aiotask.brokers import _rabbitmq_reader
from aiotask.brokers._rabbitmq_delivery import Held, Incoming, Unsettled, stale
from aiotask.brokers._rabbitmq_publish import map_errors, open_connection
from aiotask.brokers._rabbitmq_reader import DirectDeliveries
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence

    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, AbstractRobustQueue
    from aiormq.abc import AbstractChannel, DeliveredMessage
    from pamqp.commands import Basic

    from aiotask.settings import Settings

    #: declares a queue (with its dead-letter queue) on a channel: RabbitMQBroker._declare_on
    Declare = Callable[[AbstractRobustChannel, str], Awaitable[AbstractRobustQueue]]

log = logging.getLogger("aiotask.brokers.rabbitmq")
#: Seconds a cancelled receive lets its RPCs on the consume channel finish (see _to_the_end).
RPC_FINISH_GRACE = 5.0


def key_spare(prefetch: int) -> int:
    """Channel-wide credit beyond `prefetch` once key queues are consumed (classic queues).

    Each consumer stays limited to `prefetch`, so a busy key never takes the spare: it is for
    the other keys' messages, which are then delivered at once instead of waiting for an ack
    to free credit and for RabbitMQ to pick, among every blocked key queue, the busy key's
    queue again (it often did, several times running: docs/rabbitmq.md, "One prefetch").
    """
    return max(1, prefetch // 4)


class Consumer:
    """The consume connection and channel, its server-side consumers and local buffers."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        app_name: str,
        declare: Declare,
        *,
        shared_prefetch: bool = False,
    ) -> None:
        self._url = url
        #: also a channel-wide (global) basic.qos: the prefetch is shared by every consumer of
        #: the channel, key queues included (classic queues only: quorum queues refuse it)
        self._shared_prefetch = shared_prefetch
        self._settings = settings
        self._app_name = app_name
        self._declare = declare
        self.conn: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        #: queue -> (the aiormq channel consumed on, consumer tag)
        self.consumers: dict[str, tuple[AbstractChannel, str]] = {}
        #: fairness key queue -> (channel, consumer tag), delivering into its queue's buffer
        self.keyed: dict[str, tuple[AbstractChannel, str]] = {}
        #: key queue -> deliveries so far (_rabbitmq_fair tells idle key queues by it)
        self.delivered: dict[str, int] = {}
        #: called with a key queue whose consumer the server cancelled (the queue was deleted)
        self.on_key_cancelled: Callable[[str], None] | None = None
        self._buffers: dict[str, list[Held]] = {}
        #: the unsettled tags of the current underlying channel (multiple=True acks)
        self._unsettled: dict[AbstractChannel, Unsettled] = {}
        self._seq = itertools.count()
        #: the buffer is fair across key queues too (a prefetch filled by one key before the
        #: next key's consumer starts must not run first): each source (key queue, or the
        #: queue itself) numbers its deliveries in turns from the turn being served
        self._turns: dict[str, int] = {}
        self._taken: dict[str, int] = {}  # queue -> the turn of the last delivery taken
        self._wake: asyncio.Event | None = None
        #: the underlying channel whose channel-wide prefetch has the key queues' spare credit
        self._spare_on: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        #: monotonic time the connection was lost; None while it is up
        self.down_since: float | None = None
        self.closing = False

    async def _open(self) -> AbstractRobustChannel:
        if self._channel is None:
            self.closing = False
            conn = await open_connection(self._url, self._settings, self._app_name, "consume")
            conn.close_callbacks.add(self._on_connection_lost)
            conn.reconnect_callbacks.add(self._on_reconnected)
            try:  # basic.qos is set by _consume, on each underlying channel before its consumers
                with map_errors(self._url, "open consume channel"):
                    channel = await conn.channel(publisher_confirms=False)
            except BaseException:  # cancelled (a worker told to stop) or failed: not kept
                self.closing = True  # no "lost connection" warning for our own close
                await conn.close()
                raise
            channel.reopen_callbacks.add(self._on_reopened)
            self.conn, self._channel = conn, channel
        return self._channel

    def _on_connection_lost(self, _sender: object, exc: BaseException | None = None) -> None:
        if self.closing or self.down_since is not None:
            return
        self.down_since = monotonic()
        log.warning("lost RabbitMQ consume connection (%s); reconnecting", redact(str(exc)))
        _hooks.reconnecting("RabbitMQ")
        self.event().set()

    def _on_reconnected(self, _sender: object) -> None:
        # Tags from the dead channel mean nothing on the new one; the server redelivers them.
        for queue, heap in self._buffers.items():
            self._buffers[queue] = live = [item for item in heap if not stale(item[3])]
            heapq.heapify(live)
        log.info("RabbitMQ consume connection restored; consumers resumed")
        self.down_since = None
        self.event().set()

    def _on_reopened(self, _sender: object) -> None:
        # A new underlying channel: consumers of the old one are gone, consume again.
        self.consumers.clear()
        self.keyed.clear()
        self.event().set()

    def _on_cancelled(self, frame: Basic.Cancel) -> None:
        for queue, (_, tag) in list(self.consumers.items()):
            if tag == frame.consumer_tag:
                log.warning("RabbitMQ cancelled the consumer of %s; consuming it again", queue)
                del self.consumers[queue]
        for name, (_, tag) in list(self.keyed.items()):
            if tag == frame.consumer_tag:  # a user deleted the key queue
                del self.keyed[name]
                if self.on_key_cancelled is not None:
                    self.on_key_cancelled(name)
        self.event().set()

    async def start(self, queues: Sequence[str]) -> None:
        """Consume every queue of `queues` not consumed yet (declaring it first)."""
        if all(q in self.consumers for q in queues):
            return
        async with self._lock:
            channel = await self._open()
            for queue in queues:
                if queue in self.consumers:
                    continue
                await _to_the_end(self._consume_queue(channel, queue))

    async def _consume_queue(self, channel: AbstractRobustChannel, queue: str) -> None:
        with map_errors(self._url, f"consume {queue!r}"):
            # a robust channel waits for a reconnect: bound it like receive() does
            async with asyncio.timeout(self._settings.broker_unreachable_timeout):
                declared = await self._declare(channel, queue)
                self.consumers[queue] = await self._consume(channel, queue, declared.name, None)

    async def _consume(
        self, channel: AbstractRobustChannel, queue: str, name: str, source: str | None
    ) -> tuple[AbstractChannel, str]:
        raw = await channel.get_underlay_channel()
        if raw not in self._unsettled:
            await self._qos(raw)
            self._unsettled = {raw: Unsettled()}  # old channels' tags are void
            raw.on_consumer_cancel_callbacks.add(self._on_cancelled)
        if source is not None and self._shared_prefetch and self._spare_on is not raw:
            prefetch = self._settings.effective_prefetch
            await raw.basic_qos(prefetch_count=prefetch + key_spare(prefetch), global_=True)
            self._spare_on = raw
        on_message = self._callback(queue, self._unsettled[raw], source)
        tag = f"aiotask.{uuid.uuid4().hex}"
        if _rabbitmq_reader.DIRECT:  # called in the channel's reader, no task per delivery
            DirectDeliveries.of(raw).register(tag, on_message)
        ok = await raw.basic_consume(name, on_message, consumer_tag=tag)  # type: ignore[arg-type]
        return raw, ok.consumer_tag or tag

    async def _qos(self, raw: AbstractChannel) -> None:
        """The prefetch per consumer and, for classic queues, channel-wide, on a new channel.

        Sent on every underlying channel, not once on the robust one: aio-pika restores only
        the last basic.qos on a reopened channel, which left its consumers without a limit.
        """
        prefetch = self._settings.effective_prefetch
        await raw.basic_qos(prefetch_count=prefetch)
        if self._shared_prefetch:
            await raw.basic_qos(prefetch_count=prefetch, global_=True)

    async def consume_key(
        self, queue: str, name: str, declare: Callable[[AbstractRobustChannel], Awaitable[object]]
    ) -> None:
        """Consume key queue `name` into `queue`'s buffer, on the one channel (one prefetch).

        `declare` declares it first (never passive: a 404 would close the shared channel).
        """
        async with self._lock:
            if name in self.keyed:
                return
            channel = await self._open()
            await _to_the_end(self._consume_key(channel, queue, name, declare))

    async def _consume_key(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        name: str,
        declare: Callable[[AbstractRobustChannel], Awaitable[object]],
    ) -> None:
        with map_errors(self._url, f"consume {name!r}"):
            async with asyncio.timeout(self._settings.broker_unreachable_timeout):
                await declare(channel)
                self.keyed[name] = await self._consume(channel, queue, name, name)

    async def cancel_key(self, name: str) -> bool:
        """Stop consuming key queue `name`; False when its channel is gone (nothing to do)."""
        consumer = self.keyed.pop(name, None)
        if consumer is None or consumer[0].is_closed:
            return False
        await consumer[0].basic_cancel(consumer[1])
        return True

    def forget_key(self, name: str) -> None:
        self.delivered.pop(name, None)
        self._turns.pop(name, None)

    def held(self, name: str) -> int:
        """Unsettled deliveries of key queue `name` on the current channel (buffered or running)."""
        return sum(u.held.get(name, 0) for u in self._unsettled.values())

    def _callback(
        self, queue: str, unsettled: Unsettled, source: str | None = None
    ) -> Callable[[DeliveredMessage], None]:
        buffers, seq, event, delivered = self._buffers, self._seq, self.event(), self.delivered
        turns, taken, me = self._turns, self._taken, source or queue

        def on_message(message: DeliveredMessage) -> None:  # no await: called in the reader
            msg = Incoming(message, unsettled, source)
            if source is not None:
                delivered[source] = delivered.get(source, 0) + 1
            turn = max(turns.get(me, 0), taken.get(queue, 0))
            turns[me] = turn + 1
            order = (turn << 40) | next(seq)
            heapq.heappush(buffers.setdefault(queue, []), (-(msg.priority or 0), order, queue, msg))
            event.set()

        return on_message

    def event(self) -> asyncio.Event:
        """Set when a delivery arrives or the connection goes down or comes back."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    async def wait(self, wake: asyncio.Event) -> None:
        """Wait for `wake`; raise once the connection has been down too long."""
        timeout = None
        if self.down_since is not None:
            limit = self._settings.broker_unreachable_timeout
            timeout = self.down_since + limit - monotonic()
            if timeout <= 0:
                raise BrokerConnectionError(
                    f"RabbitMQ at {redact(self._url)} has been unreachable for {limit:g} s "
                    "(broker_unreachable_timeout): check the server and the URL"
                )
        try:
            async with asyncio.timeout(timeout):
                await wake.wait()
        except TimeoutError:
            pass

    def take(self, queues: Sequence[str], limit: int) -> list[Held]:
        """Up to `limit` live deliveries, highest priority first, queue by queue; within a
        priority, round-robin across the queue's key queues (in turns, then arrival)."""
        out: list[Held] = []
        for queue in queues:
            heap = self._buffers.get(queue)
            while heap and len(out) < limit:
                item = heapq.heappop(heap)
                if stale(item[3]):
                    log.debug("dropping a delivery from a closed channel; the server redelivers it")
                    continue
                self._taken[queue] = item[1] >> 40
                out.append(item)
        return out

    def push_back(self, items: Sequence[Held]) -> None:
        """Return taken deliveries to their buffers (their channel is still open)."""
        for item in items:
            if not stale(item[3]):
                heapq.heappush(self._buffers.setdefault(item[2], []), item)
        self.event().set()

    def drop(self, queue: str) -> list[Held]:
        """Empty one queue's buffer; its live deliveries (the caller settles them)."""
        return [item for item in self._buffers.pop(queue, []) if not stale(item[3])]

    async def cancel(self, queue: str) -> list[Held]:
        """Cancel one queue's consumer; its buffered live deliveries (the caller hands back).

        Under the lock `start` holds while it consumes: a cancel-consumer that came while the
        worker's first receive was still declaring and consuming this queue found no consumer
        to cancel, and the consume then finished anyway (it is run to its end even when its
        receive is cancelled), leaving the server delivering to a buffer nobody took from.
        """
        async with self._lock:
            consumer = self.consumers.pop(queue, None)
            if consumer is not None and not consumer[0].is_closed:
                await consumer[0].basic_cancel(consumer[1])
        return self.drop(queue)

    async def cancel_all(self) -> list[Held]:
        """Cancel every consumer first, so nothing new arrives; every buffered live delivery.

        A channel that refuses the cancel is closing: aiormq closes a channel whose RPC was
        cancelled (a worker told to stop while its consumer declared or consumed a key queue),
        and refuses further RPCs on it before the server confirms the close. Its deliveries
        return to their queues with it, so they are not handed back (that would duplicate them).
        """
        closing: set[AbstractChannel] = set()
        for raw, tag in [*self.consumers.values(), *self.keyed.values()]:
            if raw.is_closed or raw in closing:
                continue
            try:
                await raw.basic_cancel(tag)
            except (AMQPError, ChannelInvalidStateError) as exc:
                log.debug("cannot cancel consumer %s (%s); its channel closes", tag, exc)
                closing.add(raw)
        self.consumers.clear()
        self.keyed.clear()
        held = [
            item
            for heap in self._buffers.values()
            for item in heap
            if not stale(item[3]) and item[3].channel not in closing
        ]
        self._buffers.clear()
        return held

    async def close(self) -> None:
        self.closing = True
        if self.conn is not None:
            await self.conn.close()
        self.conn = self._channel = None
        self.consumers.clear()
        self.keyed.clear()
        self._buffers.clear()
        self._unsettled.clear()
        self._spare_on = None
        self.down_since = None


async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Run RPCs on the consume channel to their end even if the caller is cancelled (briefly).

    aiormq closes a channel whose RPC is cancelled, and the consume channel carries every
    delivery of the worker: a worker told to stop while it consumed a key queue lost it, with
    the acks of the tasks still finishing in its warm shutdown (they ran again elsewhere).
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            with contextlib.suppress(asyncio.CancelledError):  # cancelled again: give up
                await asyncio.wait([task], timeout=RPC_FINISH_GRACE)
            task.cancel()
        task.add_done_callback(_retrieved)  # its error, if any, is the cancelled caller's
        raise


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("consume-channel RPC of a cancelled receive failed: %r", task.exception())
