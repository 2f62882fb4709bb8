"""Deliveries of brokers/rabbitmq.py: their handles, staleness and settling on their channel.

A delivery tag only means something on the channel that delivered it; after a reconnect the
server redelivers every unsettled message, so settling a stale delivery is dropped, not sent.

Deliveries are read straight from aiormq's frames (`Incoming`), not wrapped in aio-pika's
IncomingMessage: that wrapper sets ~30 attributes and starts a second task per message, about
a tenth of a worker's time per no-op task. Each consume channel keeps its unsettled tags
(`Unsettled`), so a batch of acks that covers every unsettled tag up to some tag is one
basic.ack(multiple=True) frame instead of one frame per message.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, MessageProcessError

from aiotask._urls import redact

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from aiormq.abc import AbstractChannel, DeliveredMessage

    from aiotask.brokers.base import Delivery

log = logging.getLogger("aiotask.brokers.rabbitmq")

#: (-priority, arrival sequence, queue, message): the local buffer's heap entries.
Held: TypeAlias = "tuple[int, int, str, Incoming]"


class Unsettled:
    """The delivery tags of one channel that are neither acked, nacked nor rejected yet.

    Deliveries from fairness key queues also count per source queue (`held`): a key queue
    is only deleted when this worker holds nothing of it (_rabbitmq_fair).
    """

    __slots__ = ("_heap", "_source", "_tags", "held")

    def __init__(self) -> None:
        self._tags: set[int] = set()
        self._heap: list[int] = []  # may hold settled tags: skipped when they reach the top
        self._source: dict[int, str] = {}  # tag -> key queue, for keyed deliveries only
        #: key queue -> its unsettled deliveries on this channel
        self.held: dict[str, int] = {}

    def add(self, tag: int, source: str | None = None) -> None:
        self._tags.add(tag)
        heapq.heappush(self._heap, tag)
        if source is not None:
            self._source[tag] = source
            self.held[source] = self.held.get(source, 0) + 1

    def discard(self, tag: int) -> None:
        self._tags.discard(tag)
        if self._source:
            source = self._source.pop(tag, None)
            if source is not None:
                self.held[source] -= 1

    def covered(self, tags: set[int]) -> int | None:
        """The highest tag T such that every unsettled tag <= T is in `tags`, or None.

        The caller acks up to T with multiple=True; those tags count as settled from here on.
        Deliveries arrive (and are added) in tag order, so no unsettled tag below T is missed.
        """
        heap, unsettled = self._heap, self._tags
        top: int | None = None
        while heap:
            tag = heap[0]
            if tag not in unsettled:
                heapq.heappop(heap)
            elif tag in tags:
                heapq.heappop(heap)
                self.discard(tag)
                top = tag
            else:
                break
        return top


class Incoming:
    """One delivery from a consume channel (see the module docstring)."""

    __slots__ = (
        "body",
        "channel",
        "content_encoding",
        "content_type",
        "delivery_tag",
        "headers",
        "message_id",
        "priority",
        "redelivered",
        "source",
        "unsettled",
    )

    def __init__(
        self, msg: DeliveredMessage, unsettled: Unsettled, source: str | None = None
    ) -> None:
        props = msg.header.properties
        self.body: bytes = msg.body
        self.channel: AbstractChannel = msg.channel
        self.delivery_tag: int = msg.delivery_tag or 0
        self.redelivered: bool = bool(msg.redelivered)
        self.headers: Mapping[str, object] = props.headers or {}
        self.message_id: str | None = props.message_id
        self.priority: int | None = props.priority
        self.content_type: str | None = props.content_type
        self.content_encoding: str | None = props.content_encoding
        self.unsettled = unsettled
        #: the fairness key queue it came from (None: the work queue)
        self.source = source
        unsettled.add(self.delivery_tag, source)

    async def ack(self) -> None:
        self.unsettled.discard(self.delivery_tag)
        await self.channel.basic_ack(self.delivery_tag)

    async def nack(self, requeue: bool = True) -> None:
        self.unsettled.discard(self.delivery_tag)
        await self.channel.basic_nack(self.delivery_tag, requeue=requeue)

    async def reject(self, requeue: bool = True) -> None:
        self.unsettled.discard(self.delivery_tag)
        await self.channel.basic_reject(self.delivery_tag, requeue=requeue)


def held(delivery: Delivery) -> Held:
    token = delivery.token
    if not isinstance(token, tuple) or len(token) != 4:
        raise TypeError(f"delivery {delivery.message_id!r} did not come from a RabbitMQBroker")
    return token


def stale(msg: Incoming) -> bool:
    """True when the delivery's channel is gone or going: its tag means nothing on any other
    channel, and a closing channel refuses the ack while the server takes the message back.

    aiormq closes a channel whose RPC was cancelled or timed out, and refuses every frame on
    it from then on, though `is_closed` stays False until the server confirms the close: a
    delivery of such a channel handed out or handed back then ran or was copied twice.
    """
    channel = msg.channel
    if channel.is_closed:
        return True
    closing = getattr(channel, _CLOSE_EVENT, None)  # aiormq 7's; absent elsewhere
    return closing is not None and closing.is_set()


#: aiormq's Channel.__close_event (name-mangled): set when the channel starts closing
_CLOSE_EVENT = "_Channel__close_event"


async def settle(action: Callable[[], Awaitable[None]]) -> None:
    # ack is a frame write, no round trip; a dead channel means the server requeued it.
    try:
        await action()
    except (ChannelInvalidStateError, MessageProcessError, AMQPError, ConnectionError) as exc:
        log.debug(
            "dropping a settle on a closed channel (%s); the message is redelivered",
            redact(repr(exc)),
        )


async def ack_all(messages: Sequence[Incoming]) -> None:
    """Ack many: one multiple=True frame for the covered run of each channel, one frame for
    each of the rest; frames are queued without waiting for each other's write."""
    by_channel: dict[int, list[Incoming]] = {}
    for msg in messages:
        if not stale(msg):
            by_channel.setdefault(id(msg.unsettled), []).append(msg)
    for group in by_channel.values():
        channel = group[0].channel
        top = group[0].unsettled.covered({m.delivery_tag for m in group})
        rest = [m.delivery_tag for m in group if top is None or m.delivery_tag > top]
        for m in group:
            m.unsettled.discard(m.delivery_tag)
        await settle(partial(_acks, channel, top, rest))


async def _acks(channel: AbstractChannel, top: int | None, rest: Sequence[int]) -> None:
    frames = ([(top, True)] if top is not None else []) + [(tag, False) for tag in rest]
    for i, (tag, multiple) in enumerate(frames):
        # only the last waits for the socket write: the frames before it are written first
        await channel.basic_ack(tag, multiple=multiple, wait=i == len(frames) - 1)


async def settle_all(actions: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Settle many at once: their frames are queued together and drained in one write."""
    if len(actions) == 1:
        await settle(actions[0])
    elif actions:
        await asyncio.gather(*(settle(action) for action in actions))
