"""amqp:// and amqps:// — RabbitMQ through aio-pika robust connections.

Two robust connections: one publishes with confirms and mandatory routing (an unroutable
message raises), the other consumes with basic.qos(prefetch_count=settings.effective_prefetch)
into a local priority buffer that `receive` drains; the consume connection opens on the first
`receive`, so a producer-only App holds one connection. Topology and counting rules live in
`_rabbitmq_topology`; the operator's view is docs/rabbitmq.md.

AMQP has no leases (capabilities.leases is False): an unacked message goes back to its queue
when the consumer's channel closes, and `extend` does nothing. Classic queues only flag a
redelivery, so the delivery count travels in a header that is rewritten by publishing a copy
and acking the original (copy confirmed first: a crash in between duplicates, never loses).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import parse_qs, urlsplit

import aio_pika
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    MessageProcessError,
    PublishError,
)

from aiotask import _hooks
from aiotask._time import monotonic
from aiotask._urls import parse_url, redact
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers.base import BrokerCapabilities, DeadLetter, Delivery, Outgoing
from aiotask.exceptions import AiotaskError, BrokerConnectionError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from aio_pika.abc import (
        AbstractChannel,
        AbstractIncomingMessage,
        AbstractRobustChannel,
        AbstractRobustConnection,
        AbstractRobustQueue,
    )

    from aiotask.settings import Settings

log = logging.getLogger(__name__)

#: (-priority, arrival sequence, queue, message): the local buffer's heap entries.
_Held: TypeAlias = "tuple[int, int, str, AbstractIncomingMessage]"
#: (routing key, original message, headers to set on the copy) for republish-then-ack.
_Copy: TypeAlias = "tuple[str, AbstractIncomingMessage, dict[str, object]]"

_ADMIN_TIMEOUT = 10.0
_CLOSE_HANDBACK_TIMEOUT = 5.0


class RabbitMQBroker:
    """amqp:// and amqps:// — see docs/rabbitmq.md for the topology and its trade-offs."""

    capabilities: BrokerCapabilities

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        parse_url(url, allowed=frozenset({"amqp", "amqps"}), what="broker")
        self._queue_type = topo.queue_type(parse_qs(urlsplit(url).query), redact(url))
        classic = self._queue_type == "classic"  # quorum queues (3.x) have no priorities
        self.capabilities = BrokerCapabilities(
            priorities=classic,
            max_priority=topo.MAX_PRIORITY if classic else 0,
            native_delay=True,
            push=True,
            leases=False,
        )
        self._url = url
        self._settings = settings
        self._app_name = app_name
        self._names = topo.Names(settings.key_prefix)
        self._pub_conn: AbstractRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._con_conn: AbstractRobustConnection | None = None
        self._con: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._delays: dict[str, dict[str, float]] = {}  # queue -> delay queue -> declared at
        self._consumers: dict[str, tuple[AbstractRobustQueue, str]] = {}
        self._buffers: dict[str, list[_Held]] = {}
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._down_since: float | None = None
        self._closing = False

    # -- connections -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the publish connection; the consume side opens on the first receive()."""
        await self._publisher()

    async def _open(self, role: str) -> AbstractRobustConnection:
        # Consumers come back ~1 s after the server does, unless the URL sets its own interval.
        interval = None if "reconnect_interval" in parse_qs(urlsplit(self._url).query) else 1.0
        with self._map_errors(f"connect ({role})"):
            return await aio_pika.connect_robust(
                self._url,
                timeout=min(self._settings.broker_unreachable_timeout, 30.0),
                client_properties={"connection_name": f"aiotask {self._app_name} {role}"},
                reconnect_interval=interval,
            )

    async def _publisher(self) -> AbstractRobustChannel:
        if self._pub is not None:
            return self._pub
        async with self._connect_lock:  # concurrent first publishes share one connection
            if self._pub is None:
                self._closing = False
                conn = await self._open("publish")
                try:
                    with self._map_errors("open publish channel"):
                        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                except BaseException:
                    await conn.close()
                    raise
                self._pub_conn, self._pub = conn, channel
            return self._pub

    async def _consumer(self) -> AbstractRobustChannel:
        if self._con is None:
            self._closing = False
            conn = await self._open("consume")
            conn.close_callbacks.add(self._on_connection_lost)
            conn.reconnect_callbacks.add(self._on_reconnected)
            with self._map_errors("open consume channel"):
                channel = await conn.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=self._settings.effective_prefetch)
            self._con_conn, self._con = conn, channel
        return self._con

    def _on_connection_lost(self, _sender: object, exc: BaseException | None = None) -> None:
        if self._closing or self._down_since is not None:
            return
        self._down_since = monotonic()
        log.warning("lost RabbitMQ consume connection (%s); reconnecting", redact(str(exc)))
        _hooks.reconnecting("RabbitMQ")
        self._event().set()

    def _on_reconnected(self, _sender: object) -> None:
        # Tags from the dead channel mean nothing on the new one; the server redelivers them.
        for queue, heap in self._buffers.items():
            self._buffers[queue] = live = [item for item in heap if not _stale(item[3])]
            heapq.heapify(live)
        log.info("RabbitMQ consume connection restored; consumers resumed")
        self._down_since = None
        self._event().set()

    async def close(self) -> None:
        """Hand back prefetched, unreturned messages; unsettled ones return as the channel shuts."""
        self._closing = True
        if self._con_conn is not None and self._down_since is None:
            try:
                async with asyncio.timeout(_CLOSE_HANDBACK_TIMEOUT):
                    await self._hand_back_buffered()
            except (AiotaskError, AMQPError, OSError, TimeoutError) as exc:
                log.debug("hand-back on close failed (%r); the server requeues them", exc)
        if self._con_conn is not None:
            await self._con_conn.close()
        if self._pub_conn is not None:
            await self._pub_conn.close()
        self._pub_conn = self._pub = self._con_conn = self._con = None
        self._consumers.clear()
        self._buffers.clear()
        self._declared.clear()
        self._delays.clear()
        self._down_since = None

    async def _hand_back_buffered(self) -> None:
        # Cancel first so nothing new arrives; the copies keep their count, so a warm
        # shutdown never charges a delivery to a message that was never handed out.
        for declared, tag in list(self._consumers.values()):
            await declared.cancel(tag)
        self._consumers.clear()
        held = [item for heap in self._buffers.values() for item in heap if not _stale(item[3])]
        self._buffers.clear()
        copies: list[_Copy] = []
        for _, _, queue, msg in held:
            prior, _persist = topo.prior_deliveries(msg.headers, bool(msg.redelivered))
            copies.append((self._names.work(queue), msg, {topo.HEADER_DELIVERIES: prior}))
        await self._republish_then_ack(copies)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Publish the whole batch concurrently and wait for every confirm (one round trip)."""
        if not batch:
            return
        wall = time.time()
        items: list[tuple[str, aio_pika.Message]] = []
        for out in batch:
            await self._declare(out.queue)
            headers: dict[str, object] = {}
            routing = self._names.work(out.queue)
            ms = topo.delay_bucket_ms(out.eta - wall) if out.eta is not None else 0
            if ms and out.eta is not None:
                routing = await self._delay_queue(out.queue, ms)
                headers[topo.HEADER_ETA] = int(out.eta * 1000)
            items.append((routing, _message(out.body, out.message_id, out.priority, headers)))
        await self._publish_raw(items)

    async def _publish_raw(self, items: Sequence[tuple[str, aio_pika.Message]]) -> None:
        if not items:
            return
        exchange = (await self._publisher()).default_exchange
        with self._map_errors("publish"):
            async with asyncio.timeout(self._settings.broker_unreachable_timeout):
                results = await asyncio.gather(
                    *(exchange.publish(msg, routing_key=key, mandatory=True) for key, msg in items),
                    return_exceptions=True,
                )
        for result in results:
            if isinstance(result, PublishError):
                self._declared.clear()  # a queue vanished under us: declare again next time
                self._delays.clear()
                raise BrokerConnectionError(
                    f"RabbitMQ returned a message as unroutable ({result}): its queue does not "
                    "exist (deleted after this process declared it?); publish again to re-declare"
                ) from result
            if isinstance(result, asyncio.CancelledError):  # its channel went away mid-publish
                raise BrokerConnectionError("a publish to RabbitMQ was interrupted; publish again")
            if isinstance(result, BaseException):
                with self._map_errors("publish"):
                    raise result

    async def _declare(self, queue: str) -> None:
        if queue in self._declared:
            return
        channel = await self._publisher()
        await self._declare_on(channel, queue)
        self._declared.add(queue)

    async def _declare_on(self, channel: AbstractRobustChannel, queue: str) -> AbstractRobustQueue:
        with self._map_errors(f"declare queue {queue!r}"):
            await channel.declare_queue(self._names.dead(queue), durable=True)
            return await channel.declare_queue(
                self._names.work(queue),
                durable=True,
                arguments=topo.work_arguments(self._names, queue, self._queue_type),
            )

    async def _delay_queue(self, queue: str, ms: int) -> str:
        name = self._names.delay(queue, ms)
        known = self._delays.setdefault(queue, {})
        declared = known.get(name)
        if declared is None or monotonic() - declared > topo.DELAY_REDECLARE_S:
            channel = await self._publisher()
            with self._map_errors(f"declare delay queue {name!r}"):
                await channel.declare_queue(
                    name,
                    durable=True,
                    arguments=topo.delay_arguments(self._names, queue, ms),
                    robust=False,  # short-lived; declared again whenever it is used
                )
            known[name] = monotonic()
        return name

    # -- consuming -------------------------------------------------------------------------

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Wait (pushed, no polling) for up to `limit` deliveries from the local buffer."""
        if limit < 1:
            return []
        await self._consume(queues)
        wake = self._event()
        while True:
            wake.clear()
            raw = self._take(queues, limit)
            if raw:
                got = await self._triage_cancel_safe(raw)
                if got:
                    return got
                continue
            await self._wait(wake)

    async def _consume(self, queues: Sequence[str]) -> None:
        if all(q in self._consumers for q in queues):
            return
        async with self._lock:
            channel = await self._consumer()
            for queue in queues:
                if queue in self._consumers:
                    continue
                with self._map_errors(f"consume {queue!r}"):
                    # a robust channel waits for a reconnect: bound it like receive() does
                    async with asyncio.timeout(self._settings.broker_unreachable_timeout):
                        declared = await self._declare_on(channel, queue)
                        tag = await declared.consume(self._callback(queue))
                self._consumers[queue] = (declared, tag)

    def _callback(self, queue: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            priority = message.priority or 0
            heapq.heappush(
                self._buffers.setdefault(queue, []), (-priority, next(self._seq), queue, message)
            )
            self._event().set()

        return on_message

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    async def _wait(self, wake: asyncio.Event) -> None:
        timeout = None
        if self._down_since is not None:
            limit = self._settings.broker_unreachable_timeout
            timeout = self._down_since + limit - monotonic()
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

    def _take(self, queues: Sequence[str], limit: int) -> list[_Held]:
        out: list[_Held] = []
        for queue in queues:
            heap = self._buffers.get(queue)
            while heap and len(out) < limit:
                item = heapq.heappop(heap)
                if _stale(item[3]):
                    log.debug("dropping a delivery from a closed channel; the server redelivers it")
                    continue
                out.append(item)
        return out

    def _push_back(self, items: Sequence[_Held]) -> None:
        for item in items:
            if not _stale(item[3]):
                heapq.heappush(self._buffers.setdefault(item[2], []), item)
        self._event().set()

    async def _triage_cancel_safe(self, raw: list[_Held]) -> list[Delivery]:
        # Triage may publish; shielded so a cancelled receive() puts what it took back
        # into the buffer instead of leaving it unacked and invisible until close().
        task = asyncio.ensure_future(self._triage(raw))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._restore_after_cancel)
            raise

    def _restore_after_cancel(self, task: asyncio.Future[list[Delivery]]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._push_back([_held(d) for d in task.result()])

    async def _triage(self, raw: list[_Held]) -> list[Delivery]:
        """Count deliveries; dead-letter, re-delay or persist a count before handing out."""
        keep: list[Delivery] = []
        again: list[_Copy] = []
        now_ms = time.time() * 1000
        try:
            for item in raw:
                verdict = await self._classify(item, now_ms)
                if isinstance(verdict, Delivery):
                    keep.append(verdict)
                else:
                    again.append(verdict)
            await self._republish_then_ack(again)
        except BaseException:
            # Nothing was acked (acks follow a successful publish): all of it is still ours.
            self._push_back(raw)
            raise
        return keep

    async def _classify(self, item: _Held, now_ms: float) -> Delivery | _Copy:
        _, _, queue, msg = item
        prior, persist = topo.prior_deliveries(msg.headers, bool(msg.redelivered))
        eta = topo.header_int(msg.headers, topo.HEADER_ETA)
        if prior >= self._settings.max_deliveries:
            reason = (
                f"delivered {prior} times without being settled "
                f"(max_deliveries={self._settings.max_deliveries})"
            )
            log.warning("dead-lettering message %s from %s: %s", msg.message_id, queue, reason)
            return (self._names.dead(queue), msg, _dead_headers(prior, reason))
        if eta is not None and (eta - now_ms) / 1000 > topo.ETA_TOLERANCE_S:
            target = await self._delay_queue(queue, topo.delay_bucket_ms((eta - now_ms) / 1000))
            return (target, msg, {topo.HEADER_DELIVERIES: prior})
        if persist:
            log.warning(
                "message %s from %s was delivered before and not settled (delivery %d of %d)",
                msg.message_id,
                queue,
                prior + 1,
                self._settings.max_deliveries,
            )
            return (self._names.work(queue), msg, {topo.HEADER_DELIVERIES: prior})
        return Delivery(msg.body, queue, msg.message_id or "", prior + 1, item)

    async def _republish_then_ack(self, copies: Sequence[_Copy]) -> None:
        if not copies:
            return
        live = [(key, msg, headers) for key, msg, headers in copies if not _stale(msg)]
        await self._publish_raw([(key, _copy(msg, headers)) for key, msg, headers in live])
        for _, msg, _ in live:
            await _settle(msg.ack)

    # -- settling --------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """basic.ack; a delivery from a channel that has since closed is dropped (redelivered)."""
        for d in deliveries:
            await _settle(_held(d)[3].ack)

    async def heartbeat(self) -> None:
        """Liveness for fast takeover (see brokers/base.py); not implemented yet here."""

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        """requeue: a copy with the same count goes back (not a failed delivery); else .dead."""
        copies: list[_Copy] = []
        for d in deliveries:
            _, _, queue, msg = _held(d)
            if requeue:
                headers: dict[str, object] = {topo.HEADER_DELIVERIES: d.deliveries - 1}
                copies.append((self._names.work(queue), msg, headers))
            else:
                why = reason or "rejected"
                log.warning("dead-lettering message %s from %s: %s", d.message_id, queue, why)
                copies.append((self._names.dead(queue), msg, _dead_headers(d.deliveries, why)))
        await self._republish_then_ack(copies)

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to renew: AMQP holds a delivery until its channel closes (consumer_timeout)."""

    # -- administration --------------------------------------------------------------------

    @asynccontextmanager
    async def _admin(self) -> AsyncIterator[AbstractChannel]:
        # A plain (non-robust) channel: a 404 closes it, and nothing should reopen it.
        conn = self._pub_conn
        if conn is None:
            await self._publisher()
            conn = self._pub_conn
        assert conn is not None  # noqa: S101 - set by _publisher()
        channel = aio_pika.Channel(conn, publisher_confirms=False)
        with self._map_errors("open admin channel"):
            await channel.initialize()
        try:
            async with asyncio.timeout(_ADMIN_TIMEOUT):
                yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _purge_named(self, name: str) -> int:
        try:
            async with self._admin() as channel:
                queue = await channel.declare_queue(name, passive=True)
                return (await queue.purge()).message_count or 0
        except ChannelNotFoundEntity:
            return 0

    async def purge(self, queue: str) -> int:
        """Drop the ready messages of a queue, its known delay queues and the local buffer."""
        count = 0
        for *_, msg in self._buffers.pop(queue, []):
            if not _stale(msg):
                count += 1
                await _settle(msg.ack)
        with self._map_errors(f"purge {queue!r}"):
            count += await self._purge_named(self._names.work(queue))
            for name in list(self._delays.get(queue, {})):
                count += await self._purge_named(name)
        return count

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read without removing: basic.get, then the channel closes and requeues them all."""
        out: list[DeadLetter] = []
        try:
            async with self._admin() as channel:
                dead = await channel.declare_queue(self._names.dead(queue), passive=True)
                while len(out) < limit:
                    msg = await dead.get(no_ack=False, fail=False)
                    if msg is None:
                        break
                    reason = topo.dead_reason(msg.headers)
                    out.append(DeadLetter(msg.message_id or "", msg.body, reason))
        except ChannelNotFoundEntity:
            return []
        return out

    async def delete_queue(self, queue: str) -> None:
        """Delete a queue with its dead and known delay queues (tests, cleanup); idempotent."""
        consumer = self._consumers.pop(queue, None)
        if consumer is not None:
            await consumer[0].cancel(consumer[1])
        self._buffers.pop(queue, None)
        self._declared.discard(queue)
        names = [self._names.work(queue), self._names.dead(queue)]
        names += list(self._delays.pop(queue, {}))
        with self._map_errors(f"delete {queue!r}"):
            async with self._admin() as channel:
                for name in names:
                    await channel.queue_delete(name)

    @contextmanager
    def _map_errors(self, doing: str) -> Iterator[None]:
        """Client-library errors -> our hierarchy, with the URL's password redacted."""
        try:
            yield
        except AiotaskError:
            raise
        except ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"RabbitMQ refused to {doing}: {redact(str(exc))}. A queue's arguments are fixed "
                "when it is created: delete the queue or use another key_prefix"
            ) from exc
        except DeliveryError as exc:
            raise BrokerConnectionError(
                f"RabbitMQ did not confirm a message ({doing}): {redact(str(exc))}; publish again"
            ) from exc
        except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            raise BrokerConnectionError(
                f"cannot {doing} on RabbitMQ at {redact(self._url)}: "
                f"{type(exc).__name__}: {redact(str(exc))}"
            ) from exc


def _message(
    body: bytes, message_id: str, priority: int, headers: dict[str, object]
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=message_id or None,
        priority=min(max(priority, 0), topo.MAX_PRIORITY),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers or None,  # type: ignore[arg-type]
    )


def _copy(msg: AbstractIncomingMessage, headers: dict[str, object]) -> aio_pika.Message:
    """A fresh message with the original's body and identity, minus what the server added."""
    merged: dict[str, object] = {
        k: v
        for k, v in (msg.headers or {}).items()
        if k not in topo.SERVER_HEADERS and k != topo.HEADER_QUORUM_COUNT
    }
    merged.update(headers)
    copy = _message(msg.body, msg.message_id or "", msg.priority or 0, merged)
    copy.content_type = msg.content_type
    copy.content_encoding = msg.content_encoding
    return copy


def _dead_headers(deliveries: int, reason: str) -> dict[str, object]:
    return {topo.HEADER_DELIVERIES: deliveries, topo.HEADER_REASON: reason}


def _held(delivery: Delivery) -> _Held:
    token = delivery.token
    if not isinstance(token, tuple) or len(token) != 4:
        raise TypeError(f"delivery {delivery.message_id!r} did not come from a RabbitMQBroker")
    return token


def _stale(msg: AbstractIncomingMessage) -> bool:
    """True when the delivery's channel is gone: its tag means nothing on any other channel."""
    try:
        return bool(msg.channel.is_closed)
    except ChannelInvalidStateError:
        return True


async def _settle(action: Callable[[], Awaitable[None]]) -> None:
    # ack is a frame write, no round trip; a dead channel means the server requeued it.
    try:
        await action()
    except (ChannelInvalidStateError, MessageProcessError, AMQPError, ConnectionError) as exc:
        log.debug("dropping a settle on a closed channel (%r); the message is redelivered", exc)
