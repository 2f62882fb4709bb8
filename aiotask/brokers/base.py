"""The broker seam: bytes plus routing, nothing about tasks.

A broker moves opaque message bodies between producers and workers with at-least-once
delivery. It knows queues, priorities, delays, leases and dead letters; it never decodes a
body. Every method takes a batch so an implementation can spend one round trip per call.

Delivery contract, for every implementation:
- `publish` returns once the broker holds the whole batch durably (as durably as the server is
  configured); a message with `eta` in the future is not delivered before it.
- `receive` waits (without busy polling where the server can notify) until at least one
  message is ready and returns at most `limit`; each is then *owned* by this consumer until
  it is acked, nacked, or its lease (`visibility_timeout`) lapses without `extend`.
- A delivered message that is neither acked nor nacked (its worker died) is delivered again
  after its lease lapses, with `deliveries` incremented. Past `max_deliveries` the broker
  dead-letters it with a reason instead of delivering it. A broker without leases
  (`capabilities.leases` is False: AMQP) redelivers it when the consumer's connection closes
  (`close()` or process death) instead, never on a timer; `extend` is then a no-op.
- `nack(requeue=True)` hands a message back for immediate redelivery and does not count it as
  a failed delivery (an unstarted, prefetched message); `nack(requeue=True, counted=True)`
  hands back a message whose task was started and abandoned (shutdown grace over): it is
  redelivered at once but counts as a delivery, so a task that always hangs reaches
  `max_deliveries` and is dead-lettered. `nack(requeue=False, reason=...)` dead-letters it.
- `heartbeat()` tells the broker this consumer is alive (the worker calls it every
  `worker_heartbeat_interval`). A lease broker takes over the messages of a consumer whose
  heartbeat lapsed for `worker_lost_after` at once, without waiting for their leases, and never
  takes a message from a consumer whose heartbeat is fresh. A no-op where the server itself
  notices a dead consumer (AMQP: the connection closes).
- `receive` is cancel-safe: a message it took from the server when cancelled is returned to
  the queue by `close()` or by lease expiry, never lost.

Administration (`aiotask queues`, `aiotask dlq`, `app.dead_letters`): `queue_stats` counts,
`known_queues` names the queues the server can list, `dead_letters` reads without removing,
`delete_dead_letters` removes exactly the entries `dead_letters` returned (not a later dead
letter of the same message id). Replay is built above the seam from these and
`publish` (copy first, delete second: a crash in between duplicates, never loses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from contextlib import AbstractAsyncContextManager


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish: its bytes and where they go."""

    queue: str
    body: bytes
    message_id: str  # == task id; lets brokers de-duplicate and logs correlate
    priority: int = 0  # 0..9, higher first, on brokers that support priorities
    eta: float | None = None  # unix seconds; the broker holds the message until then
    #: False: publish() may return once the bytes are written, before the broker confirms it
    #: stored them (RabbitMQ; the other brokers always know at once). A per-call choice of
    #: latency over the guarantee: a failure after the write is logged, not raised.
    confirm: bool = True
    #: fairness: a queue's messages are served round-robin across these opaque keys ("": the
    #: key of every message without one); brokers without support deliver FIFO (task-options.md)
    fair_key: str = ""


@dataclass(slots=True, eq=False)
class Delivery:
    """A message handed to a consumer, owned by it until settled."""

    body: bytes
    queue: str
    message_id: str
    #: times this message has been delivered, this delivery included (1 on the first)
    deliveries: int
    #: the broker's own handle (stream entry id, delivery tag, row id); opaque to callers
    token: object = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message, for inspection and tests."""

    message_id: str
    body: bytes
    reason: str
    #: the queue it was dead-lettered from ("" where a broker does not say)
    queue: str = ""
    #: unix seconds it was dead-lettered, where the broker records it
    died_at: float | None = None
    #: the broker's handle on this one entry (row id, stream entry id); opaque to callers
    token: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one queue at one moment; None where the broker cannot tell."""

    queue: str
    #: ready to be delivered now
    ready: int
    #: held until their eta (None: not countable, e.g. RabbitMQ's per-bucket delay queues)
    delayed: int | None
    #: delivered and not yet settled (leased; None: RabbitMQ without the management API)
    in_flight: int | None
    #: in the queue's dead letters
    dead: int


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    """What a broker does natively; the worker and docs adapt to it, nothing is emulated."""

    priorities: bool = False
    max_priority: int = 0
    native_delay: bool = True
    #: receive() is woken by the server (no polling interval)
    push: bool = True
    #: unsettled messages return when a lease lapses; False: only when the consumer closes/dies
    leases: bool = True
    #: a queue is served round-robin across `Outgoing.fair_key`s; False: FIFO, the key ignored
    fairness: bool = False


@runtime_checkable
class Broker(Protocol):
    """A message transport; see the module docstring for the delivery contract."""

    capabilities: BrokerCapabilities

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, batch: Sequence[Outgoing]) -> None: ...

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]: ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None: ...

    async def heartbeat(self) -> None: ...

    async def extend(self, deliveries: Sequence[Delivery]) -> None: ...

    async def purge(self, queue: str) -> int: ...

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]: ...

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int: ...

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]: ...

    async def known_queues(self) -> list[str]: ...


#: Records a broker's capped event stream keeps (approximately, on Redis); older ones are
#: dropped. A record is what aiotask.events packs per flush: up to 1500 events.
EVENTS_CAP = 1000


@runtime_checkable
class EventStream(Protocol):
    """A broker that also carries monitoring events (see aiotask/events/): opaque records in a
    capped, best-effort stream, apart from the task queues.

    - `emit_events` appends a batch of records in one round trip; the stream keeps the last
      EVENTS_CAP or so (a Redis Stream with MAXLEN ~, a capped SQLite table), or hands each
      record to the followers bound at that moment (a RabbitMQ topic exchange: nobody bound,
      nothing kept).
    - `events()` follows the stream live: entering the context subscribes (from now on: no
      history), iterating yields each record emitted afterwards, in order per emitter.
    Nothing is ever written when nobody calls `emit_events`.
    """

    async def emit_events(self, batch: Sequence[bytes]) -> None: ...

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


#: `EventLog.events_after(END)`: from the current end of the stream.
END = "$"


@runtime_checkable
class EventLog(Protocol):
    """An event stream whose entries have positions, so a follower can resume where it left
    off (SQLite and PostgreSQL tables: row ids; a Redis Stream: entry ids). A RabbitMQ topic
    exchange keeps nothing and has none.

    - `events_after(cursor)` follows like `events()` but yields (position, record), starting
      right after the entry at position `cursor`; with None, from the oldest entry kept;
      with END, from the current end (what `events()` does). When the stream was trimmed
      past `cursor` it starts from the oldest entry kept (the ones in between are gone: it
      logs so); a position it cannot read (another stream's) means all it keeps, logged too.
    """

    def events_after(
        self, cursor: str | None
    ) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, bytes]]]: ...
