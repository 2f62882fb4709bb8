"""Fairness across keys on RabbitMQ (`Outgoing.fair_key`): one queue per (queue, key).

A keyed message goes to its key's queue, `{prefix}.{queue}.k.{key}` (a key that is not a
short plain word is hashed: `.h.{sha256[:32]}`), declared by the publisher with the work
queue's own arguments (dead letters to the queue's .dead, x-max-priority or quorum), and
carries its key in the `x-aiotask-fair-key` header so that every copy aiotask publishes (a
requeue, a recount, a hand-back) goes back to it. The worker consumes every key queue of its
queues on its one consume channel: RabbitMQ round-robins a channel's deliveries across its
consumers, which is round-robin across keys, and the work queue itself takes its turn as one
more consumer. A delayed keyed message waits in the queue's delay queues like any other and
is moved into its key queue by the worker when it comes due (one extra publish).

Discovery: whoever publishes to a key queue declares it and appends the key to the queue's
announcement stream, `{prefix}.{queue}.keys` (a RabbitMQ stream, 3.9+: an append-only log
with retention), before its first publish to the key and again before any publish to the key
made more than REDECLARE_S after its last announcement. A worker reads the stream from the
first retained entry when it starts consuming a queue and then follows it live, so workers
started later learn existing keys too; a worker announces a key it received messages from
again every KEEP_S, so a backlog keeps its key in the retention while it drains.
Administration (stats, purge, delete) reads it to its end (a marker it appends itself) in a
fresh process.

Parking (`FairConsumer.sweep`): a key queue this worker consumed without a delivery and
without hearing its key announced for IDLE_S, holding none of its messages, has its consumer
cancelled and is *parked*: kept on the server, not consumed. Workers never delete key queues:
a queue.delete(if-empty, if-unused) racing a publish can drop a message RabbitMQ has already
confirmed (a message routed to the queue process as it exits is confirmed and lost with it),
and "nothing is lost" comes first. Empty key queues stay until a user removes them
(`delete_queue`, or rabbitmqctl).

Why a parked key queue is consumed again as soon as it is published to. Take a publish to
the key at time p by a process P. P announced the key at some a with p - REDECLARE_S <= a <= p
(the announce comes before the publish, and P announces again once its last one is older
than REDECLARE_S), and the message reaches the queue after a. A worker W following the
stream hears that announcement at some h >= a:
- if W is not consuming the key queue then, it consumes it again (`learn`), and the message,
  in the queue already or arriving later, is delivered;
- if W is consuming it then, W parks it no earlier than h + IDLE_S >= p + IDLE_S - REDECLARE_S
  (an announcement heard up to the end of the cancel counts; after the cancel W also checks
  that the queue holds no ready message): with REDECLARE_S = IDLE_S / 2, W keeps consuming
  for at least IDLE_S / 2 after the publish, and the message is delivered before that.
So a message never waits in an unconsumed key queue while a worker follows the stream, except
when its publish reaches the queue more than IDLE_S - REDECLARE_S after its announcement (a
publisher stalled through a reconnect). The park check is the safety net for that: a parked
key queue is probed (a passive declare on one long-lived channel) after PARK_CHECK_S, then
at doubling intervals up to PARK_CHECK_MAX_S, and consumed again once it holds a message.
Cost: one declare and one announcement per key per REDECLARE_S per publishing process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import uuid
from functools import partial
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.exceptions import (
    AMQPError,
    ChannelNotFoundEntity,
    PublishError,
)

from aiotask._time import monotonic
from aiotask._urls import redact
from aiotask.brokers._common import text
from aiotask.brokers._rabbitmq_publish import message
from aiotask.exceptions import AiotaskError, BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from aio_pika.abc import AbstractChannel, AbstractRobustChannel
    from aiormq.abc import AbstractChannel as RawChannel
    from aiormq.abc import DeliveredMessage

    from aiotask.brokers._rabbitmq_admin import Prober
    from aiotask.brokers._rabbitmq_consume import Consumer
    from aiotask.brokers._rabbitmq_publish import Outbound, Publisher
    from aiotask.brokers._rabbitmq_topology import Names

    OpenChannel = Callable[[], AbstractAsyncContextManager[AbstractChannel]]
    #: the work queue's settled arguments (declaring the work queue first)
    WorkArgs = Callable[[str], Awaitable[dict[str, object]]]

log = logging.getLogger("aiotask.brokers.rabbitmq")

#: The message's fairness key, on the AMQP message (the broker never reads the body).
HEADER_FAIR_KEY = "x-aiotask-fair-key"
#: Seconds without a delivery or an announcement after which a worker parks a key queue.
IDLE_S = 30.0
#: A publish to a key last announced by this process longer ago announces it again. Below
#: IDLE_S, so that a publish to a key idle long enough to be parked always announces it.
REDECLARE_S = IDLE_S / 2
#: A parked key queue is probed after this long, then at doubling intervals up to the max.
PARK_CHECK_S = 5.0
PARK_CHECK_MAX_S = 60.0
#: A worker announces a key it received a message from again this often, so a key with a
#: backlog stays in the stream's retention while it drains (workers started later learn it).
KEEP_S = 60.0
#: After an error following announcements or consuming key queues, wait this long.
RETRY_S = 2.0
#: Retention of the announcement stream: a key queue nobody published to nor announced for
#: this long is not learnt by a worker started afterwards (see docs/rabbitmq.md).
STREAM_ARGUMENTS: dict[str, object] = {
    "x-queue-type": "stream",
    "x-max-age": "7D",
    "x-max-length-bytes": 64 * 1024 * 1024,
    "x-stream-max-segment-size-bytes": 4 * 1024 * 1024,  # retention drops whole segments
}
#: An announcement's body: this prefix and the key (UTF-8), or _MARKER and an id (the end
#: marker of an admin read)
_KEY = b"k:"
_MARKER = b"m:"
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Times a keyed message returned as unroutable (its key queue deleted) is sent again.
_UNROUTABLE_RETRIES = 3
#: Announcements a follower may hold unacked (a stream consumer needs a prefetch).
_FEED_PREFETCH = 500


def key_queue(names: Names, queue: str, key: str) -> str:
    """The key's queue: the key itself when it is a plain word, else a hash of it."""
    if _PLAIN.fullmatch(key):
        return f"{names.work(queue)}.k.{key}"
    return f"{names.work(queue)}.h.{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def keys_stream(names: Names, queue: str) -> str:
    return f"{names.work(queue)}.keys"


def fair_key_of(headers: Mapping[str, object] | None) -> str:
    value = (headers or {}).get(HEADER_FAIR_KEY)
    return text(value) if isinstance(value, bytes | str) else ""


class FairPublisher:
    """Declares and announces key queues for the publish side (and the worker's copies)."""

    def __init__(self, pub: Publisher, names: Names, work_args: WorkArgs) -> None:
        self._pub = pub
        self.names = names
        self._work_args = work_args
        self._declared: dict[str, float] = {}  # key queue -> monotonic time declared
        self._streams: set[str] = set()
        self._homes: dict[str, tuple[str, str]] = {}
        self.redeclare = REDECLARE_S

    async def ensure(self, queue: str, key: str) -> str:
        """The key queue's name, declared and announced unless done in the last `redeclare`
        seconds (the time kept is from before the announce: never later than it)."""
        name = self.home(queue, key)
        done = self._declared.get(name)
        now = monotonic()
        if done is None or now - done > self.redeclare:
            args = await self._work_args(queue)
            await self._pub.run(
                f"declare key queue {name!r}",
                lambda ch: ch.declare_queue(name, durable=True, arguments=args, robust=False),
            )
            await self.announce(queue, [_KEY + key.encode()])
            self._declared[name] = now
        return name

    async def announce(self, queue: str, bodies: Sequence[bytes]) -> None:
        """Append to the queue's announcement stream (confirmed).

        The stream is declared before each announcement, which waits until it is up: for a
        moment after a node restart (RabbitMQ 3.10) a publish to a stream is returned
        unroutable, or even confirmed and dropped, while a declare of it fails NOT_FOUND
        ("home node ... is down"). An announcement returned unroutable goes again.
        """
        backoff = self._pub.backoff()
        while True:
            stream = await self.stream(queue, again=True)
            items = [(stream, message(body, "", 0, {})) for body in bodies]
            results = await self._pub.send(items)
            if not any(isinstance(r, PublishError) for r in results) or not await backoff.sleep():
                break
        error = self._pub.failure(items, results)
        if error is not None:
            raise error

    async def stream(self, queue: str, *, again: bool = False) -> str:
        """The queue's announcement stream, declared once (or `again`) and up."""
        stream = keys_stream(self.names, queue)
        backoff = self._pub.backoff()
        while again or stream not in self._streams:
            try:
                await self._pub.run(
                    f"declare stream {stream!r}",
                    lambda ch: ch.declare_queue(
                        stream, durable=True, arguments=STREAM_ARGUMENTS, robust=False
                    ),
                )
            except BrokerConnectionError as exc:
                # NOT_FOUND to a (non-passive) declare: the stream exists but is not up yet
                if (
                    not isinstance(exc.__cause__, ChannelNotFoundEntity)
                    or not await backoff.sleep()
                ):
                    raise
                continue
            self._streams.add(stream)
            break
        return stream

    def forget(self, queue: str | None = None) -> None:
        """Declare again on next use (one queue's key queues, or all)."""
        if queue is None:
            self._declared.clear()
            self._streams.clear()
            return
        prefix = f"{self.names.work(queue)}."
        for name in [n for n in self._declared if n.startswith(prefix)]:
            del self._declared[name]
        self._streams.discard(keys_stream(self.names, queue))

    def home(self, queue: str, key: str) -> str:
        """The key queue's name, remembered so that `home_of` finds (queue, key) again."""
        name = key_queue(self.names, queue, key)
        self._homes[name] = (queue, key)
        return name

    def home_of(self, name: str) -> tuple[str, str] | None:
        """(queue, key) of a key queue named by `home`; None for any other queue."""
        return self._homes.get(name)

    def forget_name(self, name: str) -> None:
        self._declared.pop(name, None)

    async def send(
        self,
        items: Sequence[tuple[str, Outbound]],
        homes: Sequence[tuple[str, str] | None],
    ) -> list[BaseException | None]:
        """Publish (confirmed); a keyed message returned unroutable (its key queue was
        deleted by a user since this process declared it) re-declares the queue and goes
        again: a returned message was not stored, so this never duplicates one."""
        results = await self._pub.send(items)
        for _ in range(_UNROUTABLE_RETRIES):
            retry = [
                i
                for i, r in enumerate(results)
                if isinstance(r, PublishError) and homes[i] is not None
            ]
            if not retry:
                break
            for home in {h for h in (homes[i] for i in retry) if h is not None}:
                self.forget_name(key_queue(self.names, *home))
                await self.ensure(*home)
            again = await self._pub.send([items[i] for i in retry])
            for i, result in zip(retry, again, strict=True):
                results[i] = result
        return results


async def _declare(channel: AbstractRobustChannel, *, name: str, args: dict[str, object]) -> None:
    # robust=False: aio-pika must not re-declare it after a reconnect (a deleted key queue
    # would come back, and a stream still starting would fail the whole reconnect)
    await channel.declare_queue(name, durable=True, arguments=args, robust=False)


async def probe(open_channel: OpenChannel, name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of a queue, or None when it does not exist."""
    try:
        async with open_channel() as channel:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            return int(result.message_count or 0), int(result.consumer_count or 0)
    except ChannelNotFoundEntity:
        return None


async def read_keys(open_channel: OpenChannel, fpub: FairPublisher, queue: str) -> list[str]:
    """Every key announced on the queue's stream (retained entries), read to a marker."""
    if await probe(open_channel, keys_stream(fpub.names, queue)) is None:
        return []  # no key was ever announced (nor a stream created by a mere look)
    marker = _MARKER + uuid.uuid4().hex.encode()
    await fpub.announce(queue, [marker])
    stream = keys_stream(fpub.names, queue)
    keys: set[str] = set()
    done = asyncio.Event()
    async with open_channel() as channel:
        raw = await channel.get_underlay_channel()
        await raw.basic_qos(prefetch_count=_FEED_PREFETCH)

        async def on_message(msg: DeliveredMessage) -> None:
            await raw.basic_ack(msg.delivery_tag or 0)
            if msg.body == marker:
                done.set()
            elif msg.body.startswith(_KEY):
                keys.add(msg.body[len(_KEY) :].decode())

        await raw.basic_consume(stream, on_message, arguments={"x-stream-offset": "first"})
        await done.wait()  # bounded by the admin channel's timeout
    return sorted(keys)


class FairConsumer:
    """The worker side: follows announcements, consumes key queues, parks idle ones."""

    def __init__(
        self, con: Consumer, fpub: FairPublisher, probe: Prober, work_args: WorkArgs
    ) -> None:
        self._con = con
        self._fpub = fpub
        self._probe = probe
        self._work_args = work_args
        self._names = fpub.names
        self.idle = IDLE_S
        self.park_check = PARK_CHECK_S  # the first look at a parked key queue (tests: longer)
        self._feeds: dict[str, RawChannel] = {}  # queue -> the channel following its stream
        self.keys: dict[str, str] = {}  # key queue -> its queue: consumed, pending or parked
        self._pending: set[str] = set()  # to consume
        self._parked: dict[str, tuple[float, float]] = {}  # key queue -> (next look, interval)
        self._seen: dict[str, tuple[int, float]] = {}  # key queue -> (deliveries, since)
        self._heard: dict[str, float] = {}  # key queue -> when its key was last announced
        self._key_of: dict[str, str] = {}  # key queue -> its key
        self._kept: dict[str, float] = {}  # key queue -> when this worker last announced it
        self.keep = KEEP_S
        self._sweeper: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        con.on_key_cancelled = self._cancelled

    async def start(self, queues: Sequence[str]) -> None:
        """Follow each queue's announcements; consume the key queues learnt since last time.

        Never fails the receive that calls it: while the connection is down, or after an
        error (logged), it tries again on a receive at least RETRY_S later (woken then).
        """
        if self._con.down_since is not None or monotonic() < self._retry_at:
            return
        try:
            for queue in queues:
                feed = self._feeds.get(queue)
                if feed is None or feed.is_closed:
                    async with asyncio.timeout(RETRY_S * 5):  # a stream still starting up
                        await self._follow(queue)
            if self._pending:
                await self._consume_pending()
        except (AiotaskError, AMQPError, OSError, RuntimeError, TimeoutError) as exc:
            # a server without streams (before 3.9) fails every time: back off to a minute
            self._backoff = min(self._backoff * 2, 60.0) if self._backoff else RETRY_S
            self._retry_at = monotonic() + self._backoff
            # and wake the receive just after: with no key queue consumed nothing else may (a
            # receive waits for a delivery), and the key queues would stay unconsumed for good
            asyncio.get_running_loop().call_later(self._backoff + 0.1, self._con.event().set)
            log.log(
                logging.WARNING if self._backoff <= 2 * RETRY_S else logging.DEBUG,
                "fairness: cannot follow the key queues of %s (%s); trying again in %g s",
                ", ".join(queues),
                redact(str(exc) or repr(exc)),
                self._backoff,
            )
        else:
            self._backoff = 0.0
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="aiotask-rmq-fair")

    async def _follow(self, queue: str) -> None:
        conn = self._con.conn
        if conn is None:
            return
        stream = await self._fpub.stream(queue, again=True)  # up (after a node restart)
        old = self._feeds.pop(queue, None)
        if old is not None and not old.is_closed:
            await old.close()
        channel = aio_pika.Channel(conn, publisher_confirms=False)  # plain: never reopened
        await channel.initialize()
        raw = await channel.get_underlay_channel()
        await raw.basic_qos(prefetch_count=_FEED_PREFETCH)

        async def on_message(msg: DeliveredMessage) -> None:
            await raw.basic_ack(msg.delivery_tag or 0)
            if msg.body.startswith(_KEY):
                self.learn(queue, [msg.body[len(_KEY) :].decode()])

        await raw.basic_consume(stream, on_message, arguments={"x-stream-offset": "first"})
        self._feeds[queue] = raw

    def learn(self, queue: str, keys: Iterable[str]) -> None:
        """Consume these keys' queues (from the next receive)."""
        now = monotonic()
        for key in keys:
            name = key_queue(self._names, queue, key)
            self._heard[name] = now  # a consumed key queue stays consumed IDLE_S longer
            self._key_of[name] = key
            if name not in self._con.keyed:
                self.keys[name] = queue
                self._wake(name)

    def _wake(self, name: str) -> None:
        """Consume this key queue again (from the next receive)."""
        self._parked.pop(name, None)
        self._pending.add(name)
        self._con.event().set()

    async def _consume_pending(self) -> None:
        for name in list(self._pending):
            queue = self.keys.get(name)
            if queue is None:
                self._pending.discard(name)
                continue
            if await self._probe(name) is None:  # deleted (by a user) since it was announced
                self._forget(name)
                continue
            args = await self._work_args(queue)
            await self._con.consume_key(queue, name, partial(_declare, name=name, args=args))
            self._pending.discard(name)  # only once consumed: an error leaves it to retry
            self._seen.pop(name, None)

    def _cancelled(self, name: str) -> None:
        """The server cancelled our consumer: the queue was deleted (by a user)."""
        if name in self.keys:
            self._parked[name] = (0.0, self.park_check)  # the next sweep forgets it if gone

    async def stop(self, queue: str | None = None) -> None:
        """Stop consuming one queue's key queues (or all); forget them."""
        try:
            for name, owner in list(self.keys.items()):
                if queue is None or owner == queue:
                    self._forget(name)
                    await self._con.cancel_key(name)
            for q in [q for q in self._feeds if queue is None or q == queue]:
                feed = self._feeds.pop(q)
                if not feed.is_closed:
                    await feed.close()
        except (AMQPError, OSError, RuntimeError) as exc:  # the channel closes anyway
            log.debug("fairness: stop consuming key queues: %s", redact(repr(exc)))
        if queue is None and self._sweeper is not None:
            sweeper, self._sweeper = self._sweeper, None
            sweeper.cancel()
            await asyncio.wait([sweeper])  # a cancel of this caller still propagates
            if not sweeper.cancelled() and sweeper.exception() is not None:
                log.warning("fairness key queue sweeper had failed: %r", sweeper.exception())
        if queue is None:
            with contextlib.suppress(AMQPError, OSError, RuntimeError):
                await self._probe.close()

    def _forget(self, name: str) -> None:
        """Nothing more of this key queue here (this process's publisher declares it again)."""
        self._fpub.forget_name(name)
        self.keys.pop(name, None)
        self._pending.discard(name)
        self._parked.pop(name, None)
        self._seen.pop(name, None)
        self._heard.pop(name, None)
        self._key_of.pop(name, None)
        self._kept.pop(name, None)
        self._con.forget_key(name)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle / 2, PARK_CHECK_S))
            try:
                await self.sweep()
            # RuntimeError: aiormq's ChannelInvalidStateError (a channel closing under us)
            except (AiotaskError, AMQPError, OSError, TimeoutError, RuntimeError) as exc:
                log.debug("fairness key queue sweep failed: %s", redact(repr(exc)))

    async def sweep(self) -> None:
        """Park key queues without a delivery or announcement for `idle` s; look at parked ones."""
        now = monotonic()
        for name in self.keys:  # not consumed, pending nor parked: its channel was reopened
            if not (name in self._con.keyed or name in self._pending or name in self._parked):
                self._wake(name)
        keep: dict[str, list[bytes]] = {}  # queue -> announcements of keys delivered from
        for name in list(self._con.keyed):
            count = self._con.delivered.get(name, 0)
            seen = self._seen.get(name)
            if seen is None or seen[0] != count or self._con.held(name):
                if seen is not None and seen[0] != count:
                    self._keep(name, now, keep)
                self._seen[name] = (count, now)
            elif now - max(seen[1], self._heard.get(name, -math.inf)) >= self.idle:
                await self._park(name)
        for queue, bodies in keep.items():
            await self._fpub.announce(queue, bodies)
        for name, (due, _) in list(self._parked.items()):
            if due <= now:
                await self._look(name, now)

    def _keep(self, name: str, now: float, into: dict[str, list[bytes]]) -> None:
        """Announce a key delivered from again if this worker has not for `keep` seconds."""
        queue, key = self.keys.get(name), self._key_of.get(name)
        if (
            queue is not None
            and key is not None
            and now - self._kept.get(name, -math.inf) >= self.keep
        ):
            self._kept[name] = now
            into.setdefault(queue, []).append(_KEY + key.encode())

    async def _park(self, name: str) -> None:
        """Stop consuming an idle key queue, unless it turns out not idle after all."""
        count = self._con.delivered.get(name, 0)
        began = monotonic()
        if not await self._con.cancel_key(name):
            return
        self._seen.pop(name, None)
        self._parked[name] = (monotonic() + self.park_check, self.park_check)
        found = await self._probe(name)  # a message behind a full prefetch counts too
        if found is None:
            self._forget(name)
        elif (
            found[0]
            or self._con.held(name)
            or self._con.delivered.get(name, 0) != count
            or self._heard.get(name, -math.inf) >= began
        ):  # a delivery or an announcement raced the cancel, or a message waits
            self._wake(name)
        else:
            log.debug("parked idle fairness key queue %s", name)

    async def _look(self, name: str, now: float) -> None:
        """The safety net for a parked key queue: gone -> forget; holds a message -> consume;
        else look again after twice as long (up to PARK_CHECK_MAX_S)."""
        entry = self._parked.get(name)
        if entry is None:  # woken or forgotten during this sweep
            return
        interval = min(entry[1] * 2, max(PARK_CHECK_MAX_S, entry[1]))
        self._parked[name] = (now + interval, interval)
        found = await self._probe(name)
        if found is None or name not in self.keys:
            self._forget(name)
        elif found[0]:
            self._wake(name)
