"""Administration of brokers/rabbitmq.py over a plain admin channel: counts, dead letters by id.

AMQP 0-9-1 can count a queue's ready messages (passive queue.declare) but not its unacked
ones, nor list queues: both need the management plugin, which aiotask does not require. So
`in_flight` and `delayed` (delays live in per-bucket queues nobody can enumerate) are None.
A dead letter is removed by basic.get without auto-ack and an ack of the matching ones; the
others go back to the queue when the admin channel closes (RabbitMQ keeps their position).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from aiotask.brokers import _rabbitmq_topology as topo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aio_pika.abc import AbstractChannel

    from aiotask.brokers.base import DeadLetter


async def ready_count(channel: AbstractChannel, name: str) -> int:
    """Ready messages of an existing queue (passive declare: ChannelNotFoundEntity if none)."""
    queue = await channel.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def take_dead(channel: AbstractChannel, name: str, dead: Sequence[DeadLetter]) -> int:
    """Ack (remove) exactly these messages of dead-letter queue `name`, reading at most the
    count at the start; the others return to their place when the channel closes.

    Our dead-letter copies carry a unique id header (the DeadLetter's token). One the server
    dead-lettered itself has none: the oldest with its message id goes (the queue is FIFO, so
    a later dead letter of the same id, e.g. a replayed copy that failed again, is kept).
    """
    exact = {d.token for d in dead if isinstance(d.token, str)}
    by_id = Counter(d.message_id for d in dead if not isinstance(d.token, str))
    queue = await channel.declare_queue(name, passive=True)
    total = int(queue.declaration_result.message_count or 0)
    removed = 0
    for _ in range(total):
        if not exact and not +by_id:
            break
        msg = await queue.get(no_ack=False, fail=False)
        if msg is None:
            break
        token, _ = topo.dead_identity(msg.headers)
        mid = msg.message_id or ""
        if token is not None and token in exact:
            exact.discard(token)
        elif token is None and by_id[mid] > 0:
            by_id[mid] -= 1
        else:
            continue
        await msg.ack()
        removed += 1
    return removed
