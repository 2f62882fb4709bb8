"""amqp:// and amqps:// — RabbitMQ through aio-pika robust connections.

Two robust connections: one publishes (`_rabbitmq_publish`: confirms, mandatory routing,
waits through a reconnect, never re-sends a possibly stored message), the other consumes
(`_rabbitmq_consume`) with basic.qos(prefetch_count=settings.effective_prefetch) into a local
priority buffer that `receive` drains; the consume connection opens on the first `receive`, so
a producer-only App holds one connection. This module decides what each delivery becomes
(triage) and settles it. Topology and counting rules live in `_rabbitmq_topology`, admin
operations in `_rabbitmq_admin`, fairness across keys (a queue per key) in `_rabbitmq_fair`;
the operator's view is docs/rabbitmq.md.

AMQP has no leases (capabilities.leases is False): an unacked message goes back to its queue
when the consumer's channel closes, and `extend` does nothing. Classic queues only flag a
redelivery, so the delivery count travels in a header that is rewritten by publishing a copy
and acking the original (copy confirmed first: a crash in between duplicates, never loses).
A copy that cannot be published falls back to settling the original on its own channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

from aio_pika.exceptions import (
    AMQPError,
    ChannelNotFoundEntity,
    PublishError,
)

from aiotask._time import monotonic
from aiotask._urls import parse_url, redact
from aiotask.brokers import _rabbitmq_admin as admin
from aiotask.brokers import _rabbitmq_events as events
from aiotask.brokers import _rabbitmq_queues as queues
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers._common import exhausted, exhausted_reason
from aiotask.brokers._rabbitmq_consume import Consumer
from aiotask.brokers._rabbitmq_delivery import Held, Incoming, ack_all, held, settle, stale
from aiotask.brokers._rabbitmq_fair import (
    HEADER_FAIR_KEY,
    FairConsumer,
    FairPublisher,
    fair_key_of,
    key_queue,
    keys_stream,
    read_keys,
)
from aiotask.brokers._rabbitmq_publish import Outbound, Publisher, copy_of, map_errors, message
from aiotask.brokers.base import BrokerCapabilities, DeadLetter, Delivery, Outgoing, QueueStats
from aiotask.exceptions import AiotaskError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from aio_pika.abc import (
        AbstractExchange,
        AbstractRobustChannel,
        AbstractRobustQueue,
    )

    from aiotask.settings import Settings

log = logging.getLogger(__name__)

#: (routing key, original message, headers to set on the copy) for republish-then-ack.
_Copy: TypeAlias = "tuple[str, Incoming, dict[str, object]]"
#: A copy whose publish failed, with the error (its original is neither acked nor returned).
_Failed: TypeAlias = "tuple[_Copy, BaseException]"

_CLOSE_HANDBACK_TIMEOUT = 5.0


class RabbitMQBroker:
    """amqp:// and amqps:// — see docs/rabbitmq.md for the topology and its trade-offs."""

    capabilities: BrokerCapabilities

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        parse_url(url, allowed=frozenset({"amqp", "amqps"}), what="broker")
        self._types = queues.queue_types(settings, url)  # classic or quorum, per queue
        classic = self._types.default == "classic"  # quorum queues (3.x) have no priorities
        self.capabilities = BrokerCapabilities(
            priorities=classic,
            max_priority=topo.MAX_PRIORITY if classic else 0,
            native_delay=True,
            push=True,
            leases=False,
            fairness=True,
        )
        self._url = url
        self._settings = settings
        self._app_name = app_name
        self._names = topo.Names(settings.key_prefix)
        self._pub = Publisher(url, settings, app_name)
        self._con = Consumer(
            url, settings, app_name, self._declare_on, shared_prefetch=not self._types.any_quorum
        )
        self._declared: set[str] = set()
        self._settled: dict[str, queues.Declared] = {}
        self._delays: dict[str, dict[str, float]] = {}  # queue -> delay queue -> declared at
        self._events_exchange: tuple[AbstractRobustChannel, AbstractExchange] | None = None
        self._admin = partial(admin.channel, self._pub, url)
        # fairness across keys: a queue per key (_rabbitmq_fair)
        self._fpub = FairPublisher(self._pub, self._names, self._work_args)
        self._fair = FairConsumer(
            self._con,
            self._fpub,
            admin.Prober(partial(admin.open_plain, self._pub, url)),
            self._work_args,
        )

    async def _work_args(self, queue: str) -> dict[str, object]:
        """The work queue's settled arguments, which its key queues are declared with too."""
        await self._declare(queue)
        return self._settled[queue].work

    def _home(self, queue: str, msg: Incoming) -> str:
        """Where a copy of a ready message goes: its key's queue, else the work queue."""
        key = fair_key_of(msg.headers)
        return self._fpub.home(queue, key) if key else self._names.work(queue)

    # -- connections -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the publish connection (one attempt); the consume side opens on receive()."""
        await self._pub.open()

    async def close(self) -> None:
        """Hand back prefetched, unreturned messages; unsettled ones return as the channel shuts."""
        self._con.closing = True
        if self._con.conn is not None and self._con.down_since is None:
            try:
                async with asyncio.timeout(_CLOSE_HANDBACK_TIMEOUT):
                    await self._hand_back(await self._con.cancel_all())
                    await self._fair.stop()
            # RuntimeError: aiormq's ChannelInvalidStateError (a channel closing under us)
            except (AiotaskError, AMQPError, OSError, TimeoutError, RuntimeError) as exc:
                log.debug(
                    "hand-back on close failed (%s); the server requeues them", redact(repr(exc))
                )
        await self._fair.stop()
        await self._con.close()
        await self._pub.close()
        self._declared.clear()
        self._delays.clear()
        self._fpub.forget()

    async def _hand_back(self, held: Sequence[Held]) -> None:
        # The copies keep their count, so a warm shutdown never charges a delivery to a
        # message that was never handed out.
        failed = await self._republish_then_ack([self._copy_back(item) for item in held])
        if failed:  # they return when the channel closes next, charged one delivery each
            log.debug(
                "could not hand back %d prefetched messages: %s",
                len(failed),
                redact(str(failed[0][1])),
            )

    def _copy_back(self, item: Held) -> _Copy:
        prior, _persist = topo.prior_deliveries(item[3].headers, bool(item[3].redelivered))
        return (self._home(item[2], item[3]), item[3], {topo.HEADER_DELIVERIES: prior})

    async def stop_consuming(self, queue: str) -> None:
        """Stop consuming one queue (cancel-consumer): cancel, then hand its buffer back."""
        with map_errors(self._url, f"cancel the consumer of {queue!r}"):
            await self._fair.stop(queue)
            held = await self._con.cancel(queue)
            await self._republish_then_ack([self._copy_back(item) for item in held])

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Publish the whole batch concurrently and wait for every confirm (one round trip).

        Messages with `confirm=False` are written without waiting for theirs (logged if they
        fail later; see Publisher.send_unconfirmed). Waits for the channel through a reconnect,
        up to broker_unreachable_timeout; never sends a message twice (see _rabbitmq_publish),
        so an error may follow a partial publish.
        """
        if not batch:
            return
        wall = time.time()
        items: list[tuple[str, Outbound]] = []
        homes: list[tuple[str, str] | None] = []  # keyed: (queue, key), sent again if deleted
        unconfirmed: list[tuple[str, Outbound]] = []
        for out in batch:
            await self._declare(out.queue)
            headers: dict[str, object] = {}
            routing = self._names.work(out.queue)
            home = None
            if out.fair_key:  # its key's queue; a delayed one moves there when due
                headers[HEADER_FAIR_KEY] = out.fair_key
            ms = topo.delay_bucket_ms(out.eta - wall) if out.eta is not None else 0
            if ms and out.eta is not None:
                routing = await self._delay_queue(out.queue, ms)
                headers[topo.HEADER_ETA] = int(out.eta * 1000)
            elif out.fair_key:
                routing = await self._fpub.ensure(out.queue, out.fair_key)
                home = (out.queue, out.fair_key)
            msg = message(out.body, out.message_id, out.priority, headers)
            if out.confirm:
                items.append((routing, msg))
                homes.append(home)
            else:
                unconfirmed.append((routing, msg))
        if unconfirmed:
            await self._pub.ready(self._pub.backoff())
            await self._pub.send_unconfirmed(unconfirmed)
        if not items:
            return
        results = await self._fpub.send(items, homes)
        error = self._pub.failure(items, results)
        if error is not None:
            self._forget_if_unroutable(results)
            raise error

    def _forget_if_unroutable(self, results: Sequence[BaseException | None]) -> None:
        if any(isinstance(r, PublishError) for r in results):
            self._declared.clear()  # a queue vanished under us: declare again next time
            self._delays.clear()

    async def _declare(self, queue: str) -> None:
        if queue in self._declared:
            return
        await self._pub.run(f"declare queue {queue!r}", lambda ch: self._declare_on(ch, queue))
        self._declared.add(queue)

    async def _declare_on(self, channel: AbstractRobustChannel, queue: str) -> AbstractRobustQueue:
        with map_errors(self._url, f"declare queue {queue!r}"):
            args = self._settled.get(queue)
            if args is None:  # quorum: probed on throwaway channels (a mismatch closes those)
                args = await queues.settle(self._admin, self._names, queue, self._types)
                self._settled[queue] = args
            dead_args = args.dead or None
            await channel.declare_queue(self._names.dead(queue), durable=True, arguments=dead_args)
            return await channel.declare_queue(
                self._names.work(queue), durable=True, arguments=args.work
            )

    async def _delay_queue(self, queue: str, ms: int) -> str:
        name = self._names.delay(queue, ms)
        known = self._delays.setdefault(queue, {})
        declared = known.get(name)
        if declared is None or monotonic() - declared > topo.DELAY_REDECLARE_S:
            await self._pub.run(
                f"declare delay queue {name!r}",
                lambda ch: ch.declare_queue(
                    name,
                    durable=True,
                    arguments=topo.delay_arguments(self._names, queue, ms),
                    robust=False,  # short-lived; declared again whenever it is used
                ),
            )
            known[name] = monotonic()
        return name

    # -- consuming -------------------------------------------------------------------------

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Wait (pushed, no polling) for up to `limit` deliveries from the local buffer."""
        if limit < 1:
            return []
        wake = self._con.event()
        while True:
            await self._con.start(queues)  # again after a reopened channel forgot its consumers
            await self._fair.start(queues)  # key queues learnt since (fairness)
            wake.clear()
            raw = self._con.take(queues, limit)
            if raw:
                got = self._plain(raw) or await self._triage_cancel_safe(raw)
                if got:
                    return got
                continue
            await self._con.wait(wake)

    def _plain(self, raw: list[Held]) -> list[Delivery] | None:
        """The common case, none to dead-letter, re-delay or recount: handed out at once
        (no task, nothing published); otherwise None and `_triage` decides (same rules)."""
        out: list[Delivery] = []
        now_ms = time.time() * 1000
        for item in raw:
            msg = item[3]
            prior, persist = topo.prior_deliveries(msg.headers, msg.redelivered)
            if persist or exhausted(prior, self._settings.max_deliveries):
                return None
            if msg.source is None and HEADER_FAIR_KEY in msg.headers:  # to its key queue
                return None
            eta = topo.header_int(msg.headers, topo.HEADER_ETA)
            if eta is not None and (eta - now_ms) / 1000 > topo.ETA_TOLERANCE_S:
                return None
            out.append(Delivery(msg.body, item[2], msg.message_id or "", prior + 1, item))
        return out

    async def _triage_cancel_safe(self, raw: list[Held]) -> list[Delivery]:
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
            self._con.push_back([held(d) for d in task.result()])

    async def _triage(self, raw: list[Held]) -> list[Delivery]:
        """Count deliveries; dead-letter, re-delay or persist a count before handing out.

        Never raises for one message: a copy that cannot be published (the publish side stays
        down, a queue vanished) falls back to what the consume channel alone can do.
        """
        keep: list[Delivery] = []
        again: list[_Copy] = []
        origin: dict[int, Held] = {}
        now_ms = time.time() * 1000
        try:
            for item in raw:
                verdict = await self._classify(item, now_ms)
                if isinstance(verdict, Delivery):
                    keep.append(verdict)
                else:
                    again.append(verdict)
                    origin[id(verdict[1])] = item
        except BaseException:
            # Nothing was published or acked yet: all of it is still ours.
            self._con.push_back(raw)
            raise
        for copy, exc in await self._republish_then_ack(again):
            got = await self._triage_fallback(origin[id(copy[1])], copy, exc)
            if got is not None:
                keep.append(got)
        return keep

    async def _triage_fallback(
        self, item: Held, copy: _Copy, exc: BaseException
    ) -> Delivery | None:
        key, msg, headers = copy
        queue = item[2]
        if key == self._home(queue, msg):  # only the new count was not written: run it anyway
            prior = topo.header_int(headers, topo.HEADER_DELIVERIES) or 0
            log.warning(
                "could not record delivery %d of message %s from %s (%s); running it anyway",
                prior + 1,
                msg.message_id,
                queue,
                redact(str(exc)),
            )
            return Delivery(msg.body, queue, msg.message_id or "", prior + 1, item)
        # Dead-letter (or an over-long delay hop): the work queue's own dead-letter exchange
        # moves it to .dead without a publish; x-death then holds RabbitMQ's reason.
        log.error(
            "could not move message %s from %s to %s (%s); rejecting it into %s instead",
            msg.message_id,
            queue,
            key,
            redact(str(exc)),
            self._names.dead(queue),
        )
        await self._reject_to_dead(msg, queue)
        return None

    async def _reject_to_dead(self, msg: Incoming, queue: str) -> None:
        """basic.reject: RabbitMQ dead-letters it to .dead itself (declared again if gone)."""
        try:
            await self._declare(queue)  # re-declares after an unroutable copy cleared the cache
        except AiotaskError as exc:
            log.debug("cannot re-declare %s before rejecting: %s", queue, redact(str(exc)))
        await settle(partial(msg.reject, requeue=False))

    async def _classify(self, item: Held, now_ms: float) -> Delivery | _Copy:
        _, _, queue, msg = item
        prior, persist = topo.prior_deliveries(msg.headers, bool(msg.redelivered))
        eta = topo.header_int(msg.headers, topo.HEADER_ETA)
        if exhausted(prior, self._settings.max_deliveries):
            reason = exhausted_reason(prior, self._settings.max_deliveries)
            log.warning("dead-lettering message %s from %s: %s", msg.message_id, queue, reason)
            return (self._names.dead(queue), msg, topo.dead_headers(prior, reason))
        if eta is not None and (eta - now_ms) / 1000 > topo.ETA_TOLERANCE_S:
            ms = topo.delay_bucket_ms((eta - now_ms) / 1000)
            try:
                target = await self._delay_queue(queue, ms)
            except AiotaskError as exc:  # falls back to a dead letter in _triage_fallback
                log.warning(
                    "cannot declare a delay queue for %s: %s", msg.message_id, redact(str(exc))
                )
                target = self._names.delay(queue, ms)
            return (target, msg, {topo.HEADER_DELIVERIES: prior})
        if persist:
            log.warning(
                "message %s from %s was delivered before and not settled (delivery %d of %d)",
                msg.message_id,
                queue,
                prior + 1,
                self._settings.max_deliveries,
            )
            return (self._home(queue, msg), msg, {topo.HEADER_DELIVERIES: prior})
        if msg.source is None and HEADER_FAIR_KEY in msg.headers:  # a due delayed keyed one
            return (self._home(queue, msg), msg, {topo.HEADER_DELIVERIES: prior})
        return Delivery(msg.body, queue, msg.message_id or "", prior + 1, item)

    async def _republish_then_ack(self, copies: Sequence[_Copy]) -> list[_Failed]:
        """Publish the copies (confirmed), then ack each original whose copy is stored.

        Returns the copies that failed, originals untouched, for the caller to fall back on.
        A copy from a closed channel is skipped: the server redelivers its original anyway.
        """
        live = [copy for copy in copies if not stale(copy[1])]
        if not live:
            return []
        homes = [self._fpub.home_of(key) for key, _, _ in live]
        for home in {h for h in homes if h is not None}:
            try:
                await self._fpub.ensure(*home)
            except AiotaskError as exc:  # its copies fail as unroutable: the fallback applies
                log.warning("cannot declare the key queue of %s: %s", home, redact(str(exc)))
        items = [(key, copy_of(msg, hdrs)) for key, msg, hdrs in live]
        results = await self._fpub.send(items, homes)
        self._forget_if_unroutable(results)
        failed: list[_Failed] = []
        stored: list[Incoming] = []
        for copy, result in zip(live, results, strict=True):
            if result is None:
                stored.append(copy[1])
            else:
                failed.append((copy, result))
        await ack_all(stored)
        return failed

    # -- settling --------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """basic.ack; a delivery from a channel that has since closed is dropped (redelivered).

        The acks of a batch are written together (one drain of the connection's writer, not
        one per message): an ack is a frame write with no reply.
        """
        await ack_all([held(d)[3] for d in deliveries])

    async def heartbeat(self) -> None:
        """A documented no-op: RabbitMQ itself notices a dead consumer.

        When a worker dies its connection closes (TCP reset, or AMQP heartbeats time out on a
        silent network), and the server requeues every unacked delivery at once; there is no
        lease to take over early, so there is nothing to beat for.
        """

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        """Requeue a copy (its count unchanged, or +1 when `counted`), or dead-letter to .dead.

        If a copy cannot be published, the original is settled on its own channel instead:
        basic.nack(requeue) (RabbitMQ marks it redelivered: it counts one delivery) or
        basic.reject into the queue's dead-letter exchange (RabbitMQ's reason in x-death).
        """
        copies: list[_Copy] = []
        queues: dict[int, str] = {}
        for d in deliveries:
            _, _, queue, msg = held(d)
            queues[id(msg)] = queue
            if requeue:
                count = d.deliveries if counted else d.deliveries - 1
                copies.append((self._home(queue, msg), msg, {topo.HEADER_DELIVERIES: count}))
            else:
                why = reason or "rejected"
                log.warning("dead-lettering message %s from %s: %s", d.message_id, queue, why)
                copies.append((self._names.dead(queue), msg, topo.dead_headers(d.deliveries, why)))
        for (key, msg, _), exc in await self._republish_then_ack(copies):
            queue = queues[id(msg)]
            dead = key == self._names.dead(queue)
            log.error(
                "could not publish the %s copy of message %s from %s (%s); settling it on its "
                "own channel instead (%s)",
                "dead-letter" if dead else "requeued",
                msg.message_id,
                queue,
                redact(str(exc)),
                "basic.reject into .dead" if dead else "basic.nack requeue, counted",
            )
            if dead:
                await self._reject_to_dead(msg, queue)
            else:
                await settle(partial(msg.nack, requeue=True))

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to renew: AMQP holds a delivery until its channel closes (consumer_timeout)."""

    # -- administration --------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        """Drop the ready messages of a queue, its known delay queues and the local buffer."""
        count = 0
        for *_, msg in self._con.drop(queue):
            count += 1
            await settle(msg.ack)
        with map_errors(self._url, f"purge {queue!r}"):
            count += await admin.purge_named(self._admin, self._names.work(queue))
            for name in await self._key_queues(queue):
                count += await admin.purge_named(self._admin, name)
            for name in list(self._delays.get(queue, {})):
                count += await admin.purge_named(self._admin, name)
        return count

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read without removing: held unacked on an admin channel, then requeued in place."""
        return await admin.dead_letters(self._admin, self._names, queue, limit)

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        """Remove exactly these dead letters: hold the .dead queue, ack them, requeue the rest."""
        if not dead:
            return 0
        with map_errors(self._url, f"delete dead letters of {queue!r}"):
            try:
                async with self._admin() as channel:
                    return await admin.take_dead(channel, self._names.dead(queue), dead)
            except ChannelNotFoundEntity:
                return 0

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """Ready and dead counts (passive declares); delayed and in flight are unknown."""
        with map_errors(self._url, "count queues"):
            out = []
            for queue in queues:
                stats = await admin.stats(self._admin, self._names, queue)
                keyed = 0
                for name in await self._key_queues(queue):  # fairness: its key queues
                    keyed += await admin.ready_count(self._admin, name)
                out.append(dataclasses.replace(stats, ready=stats.ready + keyed))
            return out

    async def _key_queues(self, queue: str) -> list[str]:
        """The key queues of `queue`: those this process knows, and every one announced."""
        names = {name for name, owner in self._fair.keys.items() if owner == queue}
        keys = await read_keys(self._admin, self._fpub, queue)
        return sorted(names | {key_queue(self._names, queue, key) for key in keys})

    async def known_queues(self) -> list[str]:
        """Only the queues this process used: AMQP cannot list queues (the management API can)."""
        return sorted(self._declared | set(self._con.consumers))

    async def delete_queue(self, queue: str) -> None:
        """Delete a queue with its dead and known delay queues (tests, cleanup); idempotent."""
        await self._fair.stop(queue)
        await self._con.cancel(queue)  # buffered deliveries go back when their channel closes
        with map_errors(self._url, f"delete {queue!r}"):
            names = [*await self._key_queues(queue), keys_stream(self._names, queue)]
        self._fpub.forget(queue)
        self._declared.discard(queue)
        self._settled.pop(queue, None)
        names += [self._names.work(queue), self._names.dead(queue)]
        names += list(self._delays.pop(queue, {}))
        with map_errors(self._url, f"delete {queue!r}"):
            async with self._admin() as channel:
                for name in names:
                    await channel.queue_delete(name)

    # -- monitoring events (EventStream; see _rabbitmq_events) -------------------------------

    async def emit_events(self, batch: Sequence[bytes]) -> None:
        """Publish the batch to the `{prefix}.events` topic exchange (confirmed, not stored)."""
        if not batch:
            return

        async def op(channel: AbstractRobustChannel) -> None:
            known = self._events_exchange
            if known is None or known[0] is not channel:
                exchange = await events.declare(channel, self._settings.key_prefix)
                self._events_exchange = known = (channel, exchange)
            await events.publish(known[1], batch)

        await self._pub.run("emit events", op)

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Bind an exclusive auto-delete queue to the events exchange; follow it."""
        follower = events.Follower(self._url, self._settings, self._app_name)
        try:
            await follower.open()
            feed = follower.feed()
            try:
                yield feed
            finally:
                await feed.aclose()
        finally:
            await follower.close()
