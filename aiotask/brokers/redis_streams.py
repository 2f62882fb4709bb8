"""redis:// and rediss:// — Redis Streams with one consumer group per app; see docs/redis.md.

Per queue (all keys hash-tagged `{queue}`): three priority-band streams, a sorted set of
delayed messages, a dead-letter stream and a set of consumers' heartbeat expiries. `receive`
runs the due housekeeping in one round trip (wake-up acks, the delay mover, XAUTOCLAIM of
lapsed leases every visibility_timeout/2, takeover of consumers whose heartbeat lapsed), then
a strict-priority non-blocking read in Lua, and only when every stream is empty one blocking
XREADGROUP bounded by the next due eta, reclaim or takeover check, so nothing polls. Every
script touches the keys of one queue only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiotask import _tls
from aiotask._redis import cluster
from aiotask._redis.client import (
    SharedClient,
    check_replicas,
    map_errors,
    retrying,
    wait_replicas,
    warn_if_volatile,
)
from aiotask._time import monotonic, now
from aiotask.brokers import _redis_cluster_reads as cluster_reads
from aiotask.brokers import _redis_fair as fair
from aiotask.brokers import _redis_fair_lua as fair_lua
from aiotask.brokers import _redis_housekeeping as housekeeping
from aiotask.brokers import _redis_lua as lua
from aiotask.brokers._common import DEAD_LETTER_CAP, exhausted, exhausted_reason, records, text
from aiotask.brokers.base import (
    END,
    EVENTS_CAP,
    BrokerCapabilities,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
)
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.commands.core import AsyncScript

    from aiotask._redis.client import Client
    from aiotask.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
Command = tuple[Any, ...]

#: Entries a dead-letter stream keeps (approximately); older ones are trimmed.
DEAD_MAXLEN = DEAD_LETTER_CAP
_CAPPED = ("MAXLEN", "~", DEAD_MAXLEN, "*")
#: Seconds a non-blocking round trip may take before the server counts as unreachable.
OP_TIMEOUT = 10.0
#: Bytes per second a publish is granted on top of OP_TIMEOUT (a slow link, a busy server).
TRANSFER_RATE = 8 * 2**20
#: Scripts loaded on connect (and again after NOSCRIPT).
_SCRIPTS = (
    "PUBLISH", "MOVE_DUE", "RECLAIM", "HAND_BACK", "READ_BANDS", "EXTEND", "NACK", "BEAT",
    "TAKEOVER", "READ", "PUBLISH_FAIR", "RECLAIM_FAIR", "TAKEOVER_FAIR", "RING",
)  # fmt: skip
#: Confirmed publish markers one publish deletes on the way (the rest expire).
_MARKERS_PER_CALL = 64


def _reason_parts(max_deliveries: int) -> tuple[str, str]:
    """exhausted_reason() split around the delivery count, for Lua to put the count between."""
    mark = 987_654_321
    head, _, tail = exhausted_reason(mark, max_deliveries).partition(str(mark))
    return head, tail


def _band(priority: int) -> int:
    """Priority 0-9 to a stream band: 0-3 low, 4-6 normal, 7-9 high (read high first); out of
    range values land in the end bands, as `_common.clamp_priority` would put them."""
    return 2 if priority >= 7 else 1 if priority >= 4 else 0


@dataclass(frozen=True, slots=True)
class _Keys:
    queue: str
    base: str  # P:{Q}
    streams: tuple[str, str, str]  # by band, low to high
    delayed: str
    dead: str
    alive: str  # consumer -> heartbeat expiry (server ms)


class RedisStreamsBroker:
    """A Broker over Redis Streams: at-least-once, owner-checked lease renewal, push wake-ups."""

    capabilities = BrokerCapabilities(
        priorities=True, max_priority=9, native_delay=True, push=True, fairness=True
    )

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        self._url = url
        #: the client (connection pool); a backend on the same server may share it
        resolved = _tls.for_broker(settings, url)
        self.shared_client = SharedClient(resolved.url, resolved.tls)
        self._prefix = settings.key_prefix
        self._group = app_name
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._lease_ms = max(1, int(settings.visibility_timeout * 1000))
        self._reclaim_every = settings.visibility_timeout / 2
        self._max_deliveries = settings.max_deliveries
        self._reason = _reason_parts(settings.max_deliveries)
        self._unreachable = settings.broker_unreachable_timeout
        cluster.refuse_wait(url, settings.redis_wait_replicas)
        self._wait = (settings.redis_wait_replicas, int(settings.redis_wait_timeout * 1000))
        self._lost_ms = max(1, int(settings.worker_lost_after * 1000))
        self._takeover_every = settings.worker_lost_after / 3
        #: the consumer set outlives a few missed beats, then vanishes with its last consumer
        self._alive_ttl_ms = max(60_000, 10 * self._lost_ms)
        #: a publish marker outlives every retry of its batch (see publish)
        self._marker_ms = int((self._unreachable + 2 * OP_TIMEOUT + 10.0) * 1000)
        self._keys_cache: dict[str, _Keys] = {}
        self._stream_queue: dict[bytes, tuple[str, str]] = {}  # stream key -> (queue, key)
        self._fair_streams: set[str] = set()  # keyed streams read (hand back on close)
        self._ready: set[str] = set()  # queues whose consumer groups exist
        self._reading: set[str] = set()  # queues this consumer reads (heartbeat, hand back)
        self._beating = False  # heartbeat() was called: announce every queue we read
        self._next_due: dict[str, float] = {}  # queue -> earliest known eta (unix s)
        self._next_reclaim = 0.0
        self._next_takeover = 0.0
        self._cursors: dict[str, bytes] = {}  # stream -> XAUTOCLAIM cursor
        #: consumers owning nothing and idle this long are dropped from the group
        self._prune_ms = max(60_000, 10 * self._lease_ms)
        self._read_lock = asyncio.Lock()
        self._markers: dict[str, list[bytes]] = {}  # wake-up entries to ack
        self._confirmed: dict[str, list[str]] = {}  # queue -> publish markers to delete
        self._spare: list[Delivery] = []
        self._redis: Client | None = None
        self._reader: AbstractConnection | None = None
        #: Redis Cluster: one blocking read per queue (its node), kept across receive calls
        self._blocking: dict[str, asyncio.Future[Any]] = {}
        self._readers: dict[str, AbstractConnection] = {}
        self._scripts: dict[str, AsyncScript] = {}
        #: seconds one non-blocking round trip may take (an attribute so tests can shorten it)
        self.op_timeout = OP_TIMEOUT

    # -- plumbing -------------------------------------------------------------------------

    def _client(self) -> Client:
        if self._redis is None:
            raise BrokerConnectionError("the Redis broker is not connected: call connect() first")
        return self._redis

    def _sha(self, name: str) -> str:
        return self._scripts[name].sha

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, reconnecting with backoff for up to broker_unreachable_timeout seconds."""
        # after a restart without persistence the groups are gone: re-create them
        return await retrying(op, self._url, self._unreachable, on_retry=self._ready.clear)

    async def _run(
        self, cmds: Sequence[Command], ignore: tuple[str, ...] = (), timeout: float = 0.0
    ) -> list[Any]:
        """One non-transactional pipeline; re-runs scripts the server forgot (NOSCRIPT)."""
        results = await self._pipeline(cmds, timeout=timeout)
        failed = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if failed:
            await self._load_scripts()
            again = await self._pipeline([cmds[i] for i in failed], timeout=timeout)
            for i, result in zip(failed, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception) and not str(result).startswith(ignore):
                raise result
        return results

    async def _pipeline(
        self, cmds: Sequence[Command], transaction: bool = False, timeout: float = 0.0
    ) -> list[Any]:
        """Run `cmds` within op_timeout (or `timeout` when longer: large batches)."""
        pipe = self._client().pipeline(transaction=transaction)
        for cmd in cmds:
            # XCLAIM ... JUSTID replies with ids only; tell redis-py's parser so
            pipe.execute_command(*cmd, parse_justid=cmd[0] == "XCLAIM")
        # a hung server becomes a retryable error
        async with asyncio.timeout(max(self.op_timeout, timeout)):
            return list(await pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        client = self._client()
        if cluster.is_cluster(client):  # SCRIPT LOAD goes to every primary
            for script in self._scripts.values():
                await client.script_load(script.script)
            return
        pipe = client.pipeline(transaction=False)
        for script in self._scripts.values():
            pipe.script_load(script.script)
        await pipe.execute()

    def _keys(self, queue: str) -> _Keys:
        keys = self._keys_cache.get(queue)
        if keys is None:
            base = f"{self._prefix}:{{{queue}}}"
            streams = (f"{base}:s0", f"{base}:s1", f"{base}:s2")
            keys = _Keys(
                queue, base, streams, f"{base}:delayed", f"{base}:dead", f"{base}:consumers"
            )
            self._keys_cache[queue] = keys
            for stream in streams:
                self._stream_queue[stream.encode()] = (queue, stream)
        return keys

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._redis is not None:
            return
        self._redis = self.shared_client.acquire()
        for name in _SCRIPTS:
            source = getattr(lua, name, None) or getattr(fair_lua, name)
            self._scripts[name] = self._redis.register_script(source)
        try:
            with map_errors(self._url):
                await self._load_scripts()
        except BrokerConnectionError:
            self._redis = None
            await self.shared_client.release()
            raise

    async def close(self) -> None:
        """Hand back what this consumer still owns (so it runs again at once), then close."""
        if self._redis is None:
            return
        await cluster_reads.stop(self)  # first: what a pending read delivers is handed back
        sha = self._sha("HAND_BACK")
        cmds: list[Command] = []
        for queue in self._reading:
            k = self._keys(queue)
            cmds += [("EVALSHA", sha, 1, s, self._group, self._consumer) for s in k.streams]
            cmds.append(("ZREM", k.alive, self._consumer))  # gone, not lost
        cmds += fair.hand_back_commands(self)  # fairness: keyed streams read, keys re-ringed
        try:
            with map_errors(self._url):
                await self._run(cmds, ignore=("NOGROUP",))
        except BrokerConnectionError as exc:
            logger.warning("could not hand back unsettled messages on close: %s", exc)
        self._spare.clear()
        if self._reader is not None:
            await self._reader.disconnect()
            self._reader = None
        self._redis = None
        await self.shared_client.release()

    # -- producing ------------------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """The whole batch in one round trip: one PUBLISH script call per queue.

        Each call carries a marker for this batch, so a retry after a timeout or a lost
        connection (the first attempt may have run: a 500 MB batch outlasting op_timeout, a
        paused server) adds nothing twice, whichever attempt the server runs first.
        """
        wall = now()
        parts: dict[str, tuple[list[Any], list[Any]]] = {}
        keyed: fair.Parts = {}  # fairness: keyed messages go to their key's stream
        size = 0
        for out in batch:
            size += len(out.body)
            band = _band(out.priority)
            if out.fair_key:
                fair.add(self, keyed, out, band, wall)
                continue
            part = parts.get(out.queue)
            if part is None:
                part = parts[out.queue] = ([], [])
            if out.eta is not None and out.eta > wall:
                mid = out.message_id.encode()
                member = b"%d%d:%s%s" % (band, len(mid), mid, out.body)
                part[1].extend((int(out.eta * 1000), member))
                self._next_due[out.queue] = min(self._next_due.get(out.queue, math.inf), out.eta)
            else:
                part[0].extend((band, out.message_id, out.body))
        if not parts and not keyed:
            return
        batch_id = os.urandom(8).hex()
        sha = self._sha("PUBLISH")
        # a large batch gets time to travel, so it is not resent (in full) while still arriving
        extra = size / TRANSFER_RATE
        marker_ms = self._marker_ms + int(2 * extra * 1000)
        cmds: list[Command] = []
        markers: list[tuple[str, str]] = []
        for queue, (ready, later) in parts.items():
            k = self._keys_cache.get(queue) or self._keys(queue)
            marker = f"{k.base}:pub:{batch_id}"
            old = self._confirmed.pop(queue, [])[-_MARKERS_PER_CALL:]
            keys = (marker, *k.streams, k.delayed, *old)
            args = (marker_ms, len(ready) // 3, *ready, *later)
            cmds.append(("EVALSHA", sha, len(keys), *keys, *args))
            markers.append((queue, marker))
        cmds += fair.publish_commands(self, keyed, batch_id, marker_ms)
        extra += wait_replicas(cmds, *self._wait)
        attempts = 0

        async def attempt() -> list[Any]:
            nonlocal attempts
            attempts += 1
            return await self._run(cmds, timeout=self.op_timeout + extra)

        results = await self._retrying(attempt)
        if attempts == 1:  # no other copy can be in flight: the markers may go at once
            for queue, marker in markers:
                self._confirmed.setdefault(queue, []).append(marker)
        check_replicas(self._url, results, *self._wait)

    # -- consuming ------------------------------------------------------------------------

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if self._spare:
            got = self._take_spare(queues, limit)
            if got:
                return got
        qkeys = [self._keys(q) for q in queues]
        self._reading.update(queues)
        while True:
            got = await self._retrying(lambda: self._receive_once(qkeys, limit))
            if got:
                return got

    def _take_spare(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        got: list[Delivery] = []
        kept: list[Delivery] = []
        for d in self._spare:
            (got if d.queue in queues and len(got) < limit else kept).append(d)
        self._spare = kept
        return got

    def _cap(self, got: list[Delivery], limit: int) -> list[Delivery]:
        if len(got) > limit:
            self._spare.extend(got[limit:])
            del got[limit:]
        return got

    async def _receive_once(self, qkeys: list[_Keys], limit: int) -> list[Delivery]:
        if any(k.queue not in self._ready for k in qkeys):
            await self._create_groups(qkeys)
        claimed = await housekeeping.run(self, qkeys, limit)
        wall, mono = now(), monotonic()
        due = min(self._next_due.get(k.queue, 0.0) for k in qkeys) - wall
        wait = max(min(due, self._next_reclaim - mono, self._next_takeover - mono), 0.001)
        if cluster.is_cluster(self._client()):  # no script or read may span queues (slots)
            return await cluster_reads.receive(self, qkeys, limit, claimed, wait)
        streams = [s for k in qkeys for s in reversed(k.streams)]  # high band first
        try:
            # First a strict-priority look: bands in order, exactly `limit` at most, no BLOCK
            # (round-robin across fairness keys on a queue that has keyed messages).
            [reply] = await self._run([fair.read_command(self, qkeys, limit)])
            if reply or claimed:
                got = await self._parse(reply) if reply else []
                return self._cap(got + claimed, limit)
            # Every stream is empty: BLOCK on all of them, one entry per band at most.
            reader = self._reader
            if reader is None:
                pool = cast("Redis", self._client()).connection_pool  # a single node here
                reader = self._reader = pool.make_connection()  # type: ignore[no-untyped-call]
            args = ("XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", 1)
            block = ("BLOCK", math.ceil(wait * 1000))
            # The guard only catches a hung server; a cancelled read drops the connection and
            # anything delivered meanwhile stays in our PEL until reclaim or close().
            async with self._read_lock, asyncio.timeout(wait + 10.0):
                await reader.send_command(*args, *block, "STREAMS", *streams, *[">"] * len(streams))
                reply = await reader.read_response(timeout=math.inf)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream or group vanished (e.g. a restart)
                self._ready.clear()
                return self._cap(claimed, limit)
            raise
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no reply to XREADGROUP within {wait + 10.0:g}s") from exc
        got = await self._parse(reply) if reply else []
        return self._cap(got + claimed, limit)

    async def _create_groups(self, qkeys: list[_Keys]) -> None:
        cmds = [
            ("XGROUP", "CREATE", s, self._group, "0", "MKSTREAM") for k in qkeys for s in k.streams
        ]
        if self._beating:  # announce the new queues' consumer at once, not at the next beat
            cmds += [self._beat(k) for k in qkeys]
        await self._run(cmds, ignore=("BUSYGROUP",))
        self._ready.update(k.queue for k in qkeys)

    def _beat(self, k: _Keys) -> Command:
        sha = self._sha("BEAT")
        return ("EVALSHA", sha, 1, k.alive, self._consumer, self._lost_ms, self._alive_ttl_ms)

    async def _parse(self, reply: list[Any]) -> list[Delivery]:
        got: list[Delivery] = []
        over: list[Delivery] = []
        for stream_key, entries in reply:
            queue, stream = self._stream_queue.get(stream_key) or fair.stream_of(self, stream_key)
            for entry_id, f in entries:
                if len(f) == 4 and f[0] == b"m" and f[2] == b"b":  # the common shape
                    got.append(Delivery(f[3], queue, f[1].decode(), 1, (stream, entry_id)))
                    continue
                fields = dict(zip(f[::2], f[1::2], strict=False))
                if b"w" in fields:
                    self._markers.setdefault(stream, []).append(entry_id)
                    self._next_due[queue] = 0.0
                    continue
                body = fields.get(b"b", f[1] if f else b"")  # foreign entries: the first value
                mid = text(fields.get(b"m", entry_id))
                d = Delivery(body, queue, mid, int(fields.get(b"n", 0)) + 1, (stream, entry_id))
                (over if exhausted(d.deliveries - 1, self._max_deliveries) else got).append(d)
        for d in over:
            await self._bury([d], exhausted_reason(d.deliveries - 1, self._max_deliveries))
        return got

    # -- settling -------------------------------------------------------------------------

    def _by_stream(self, deliveries: Sequence[Delivery]) -> dict[str, list[bytes]]:
        by: dict[str, list[bytes]] = {}
        for d in deliveries:  # once per task: no _token() call, no list per setdefault
            token: tuple[str, bytes] = d.token  # type: ignore[assignment]
            ids = by.get(token[0])
            if ids is None:
                ids = by[token[0]] = []
            ids.append(token[1])
        return by

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """XACK + XDEL (streams do not grow) for the batch in one round trip."""
        cmds: list[Command] = []
        for stream, ids in self._by_stream(deliveries).items():
            cmds += [("XACK", stream, self._group, *ids), ("XDEL", stream, *ids)]
        if cmds:
            await self._retrying(lambda: self._run(cmds, ignore=("NOGROUP",)))

    async def heartbeat(self) -> None:
        """Push this consumer's heartbeat expiry (now + worker_lost_after, server clock) into
        the consumer set of every queue it reads: one round trip. Until the first call the
        consumer keeps the lease rule only; once lost, other consumers take its entries."""
        if not self._beating and self._redis is not None:
            # only workers beat: warn at a worker's start, not on every producer/CLI connect
            await warn_if_volatile(self._redis, self._url)
        self._beating = True
        if self._redis is None or not self._reading:
            return
        cmds = [self._beat(self._keys(q)) for q in self._reading]
        await self._retrying(lambda: self._run(cmds))

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        """Hand back (counted or not) or dead-letter; only entries this consumer still owns
        are handed back, so a message taken over after a lapse is never duplicated."""
        if not deliveries:
            return
        if not requeue:
            await self._bury(deliveries, reason or "rejected")
            return
        by: dict[str, tuple[_Keys, list[Any]]] = {}
        for d in deliveries:
            stream, entry_id = _token(d)
            by.setdefault(stream, (self._keys(d.queue), []))[1].extend((entry_id, d.deliveries))
        sha, wall = self._sha("NACK"), now()
        who = (self._group, self._consumer, int(counted), self._max_deliveries, DEAD_MAXLEN)
        cmds: list[Command] = [
            ("EVALSHA", sha, 2, stream, k.dead, *who, k.queue, wall, *self._reason, *pairs)
            for stream, (k, pairs) in by.items()
        ]
        cmds += fair.ring_commands(self, deliveries)  # keyed entries: their keys' turns again
        results = await self._retrying(lambda: self._run(cmds, ignore=("NOGROUP",)))
        buried = sum(r for r in results if isinstance(r, int))
        if buried:
            logger.warning(
                "dead-lettered %d abandoned message(s): max_deliveries=%d reached",
                buried,
                self._max_deliveries,
            )

    async def _bury(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Move to the queue's dead-letter stream, ack and delete: one MULTI."""
        cmds: list[Command] = []
        wall = now()
        for d in deliveries:
            stream, entry_id = _token(d)
            fields = (*_CAPPED, "message_id", d.message_id, "body", d.body, "reason", reason)
            cmds += [
                ("XADD", self._keys(d.queue).dead, *fields, "queue", d.queue, "time", wall),
                ("XACK", stream, self._group, entry_id),
                ("XDEL", stream, entry_id),
            ]
        logger.warning("dead-lettered %d message(s): %s", len(deliveries), reason)
        await self._retrying(lambda: self._multi(cmds))

    async def _multi(self, cmds: Sequence[Command]) -> None:
        """One MULTI; on a Redis Cluster one per hash slot (a MULTI may not span slots)."""
        if cluster.is_cluster(self._client()):
            slots = cluster.by_slot(str(cmd[1]) for cmd in cmds)
            for indexes in slots.values():
                await self._multi_one([cmds[i] for i in indexes])
            return
        await self._multi_one(cmds)

    async def _multi_one(self, cmds: Sequence[Command]) -> None:
        for result in await self._pipeline(cmds, transaction=True):
            if isinstance(result, Exception) and not str(result).startswith("NOGROUP"):
                raise result

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew the leases of entries this consumer still owns (spare ones included); one
        taken over by another consumer after a lapse stays with it (never stolen back)."""
        sha = self._sha("EXTEND")
        by = self._by_stream([*deliveries, *self._spare])
        cmds: list[Command] = [
            ("EVALSHA", sha, 1, stream, self._group, self._consumer, *ids)
            for stream, ids in by.items()
        ]
        if not cmds:
            return
        results = await self._retrying(lambda: self._run(cmds, ignore=("NOGROUP",)))
        lost = sum(len(ids) for ids in by.values()) - sum(r for r in results if isinstance(r, int))
        if lost > 0:
            logger.warning(
                "%d message(s) were taken over (or settled) by another consumer after their "
                "lease lapsed; their leases are not renewed here",
                lost,
            )

    # -- inspection -----------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        """Drop every message of the queue, delayed ones included; returns how many."""
        from aiotask.brokers import _redis_admin as admin  # inspection only: not at import

        return await admin.purge(self, self._keys(queue))

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        from aiotask.brokers import _redis_admin as admin  # inspection only: not at import

        return await admin.dead_letters(self, self._keys(queue), limit)

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        """XDEL these entries of the dead-letter stream; returns how many were still there."""
        from aiotask.brokers import _redis_admin as admin  # inspection only: not at import

        return await admin.delete_dead_letters(self, self._keys(queue), dead)

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """One script per queue, one round trip: ready, delayed, leased (pending), dead."""
        from aiotask.brokers import _redis_admin as admin  # inspection only: not at import

        return await admin.queue_stats(self, [self._keys(q) for q in queues])

    async def known_queues(self) -> list[str]:
        """Queues with keys under this key_prefix (SCAN: one node of a cluster only)."""
        from aiotask.brokers import _redis_admin as admin  # inspection only: not at import

        with map_errors(self._url):
            return await admin.scan_queues(self._client(), self._prefix, self.op_timeout * 6)

    # -- monitoring events (EventStream, EventLog; see _redis_events) ------------------------

    async def emit_events(self, batch: Sequence[bytes]) -> None:
        """XADD the records to `{prefix}:events` (MAXLEN ~ EVENTS_CAP): one round trip."""
        from aiotask.brokers import _redis_events as events  # events on only: not at import

        if batch:
            cmds = events.xadds(events.key(self._prefix), EVENTS_CAP, batch)
            await self._retrying(
                lambda: events.emit(self._client(), cmds, self.op_timeout, self._run)
            )

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Follow `{prefix}:events` from its current end."""
        return records(self.events_after(END))

    def events_after(
        self, cursor: str | None
    ) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, bytes]]]:
        """Follow `{prefix}:events` after entry `cursor` (see EventLog)."""
        from aiotask.brokers import _redis_events as events  # events on only: not at import

        return events.follow_after(self._client, self._prefix, cursor, self._retrying)


def _token(delivery: Delivery) -> tuple[str, bytes]:
    """The (stream key, entry id) this broker put in Delivery.token."""
    return cast("tuple[str, bytes]", delivery.token)
