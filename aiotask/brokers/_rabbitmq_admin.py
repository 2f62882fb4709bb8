"""Administration of brokers/rabbitmq.py over a plain admin channel: counts, dead letters by id.

AMQP 0-9-1 can count a queue's ready messages (passive queue.declare) but not its unacked
ones, nor list queues: both need the management plugin, which aiotask does not require. So
`in_flight` and `delayed` (delays live in per-bucket queues nobody can enumerate) are None.
A dead letter is removed by basic.get without auto-ack and an ack of the matching ones; the
others go back to the queue when the admin channel closes (RabbitMQ keeps their position).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aio_pika.abc import AbstractChannel


async def ready_count(channel: AbstractChannel, name: str) -> int:
    """Ready messages of an existing queue (passive declare: ChannelNotFoundEntity if none)."""
    queue = await channel.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def take_dead(channel: AbstractChannel, name: str, message_ids: Sequence[str]) -> int:
    """Ack (remove) every message of dead-letter queue `name` whose id is one of these.

    Reads each message once, up to the count at the start (later arrivals are not looked
    at); the unmatched stay unacked and return when the channel closes.
    """
    wanted = set(message_ids)
    queue = await channel.declare_queue(name, passive=True)
    total = int(queue.declaration_result.message_count or 0)
    removed = 0
    for _ in range(total):
        msg = await queue.get(no_ack=False, fail=False)
        if msg is None:
            break
        if (msg.message_id or "") in wanted:
            await msg.ack()
            removed += 1
    return removed
