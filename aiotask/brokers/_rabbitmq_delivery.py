"""Deliveries of brokers/rabbitmq.py: their handles, staleness and settling on their channel.

A delivery tag only means something on the channel that delivered it; after a reconnect the
server redelivers every unsettled message, so settling a stale delivery is dropped, not sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, TypeAlias

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, MessageProcessError

from aiotask._urls import redact

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from aio_pika.abc import AbstractIncomingMessage

    from aiotask.brokers.base import Delivery

log = logging.getLogger("aiotask.brokers.rabbitmq")

#: (-priority, arrival sequence, queue, message): the local buffer's heap entries.
Held: TypeAlias = "tuple[int, int, str, AbstractIncomingMessage]"


def held(delivery: Delivery) -> Held:
    token = delivery.token
    if not isinstance(token, tuple) or len(token) != 4:
        raise TypeError(f"delivery {delivery.message_id!r} did not come from a RabbitMQBroker")
    return token


def stale(msg: AbstractIncomingMessage) -> bool:
    """True when the delivery's channel is gone: its tag means nothing on any other channel."""
    try:
        return bool(msg.channel.is_closed)
    except ChannelInvalidStateError:
        return True


async def settle(action: Callable[[], Awaitable[None]]) -> None:
    # ack is a frame write, no round trip; a dead channel means the server requeued it.
    try:
        await action()
    except (ChannelInvalidStateError, MessageProcessError, AMQPError, ConnectionError) as exc:
        log.debug(
            "dropping a settle on a closed channel (%s); the message is redelivered",
            redact(repr(exc)),
        )


async def settle_all(actions: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Settle many at once: their frames are queued together and drained in one write."""
    if len(actions) == 1:
        await settle(actions[0])
    elif actions:
        await asyncio.gather(*(settle(action) for action in actions))
