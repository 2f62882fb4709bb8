"""redis:// and rediss:// — Redis Streams with one consumer group per app; see docs/redis.md.

Per queue (all keys hash-tagged `{queue}`): three priority-band streams, a sorted set of
delayed messages and a dead-letter stream. `receive` is one XREADGROUP over every band of
every queue; due delayed messages and a dead consumer's entries are moved in by Lua scripts
that run on the receive path (the mover when the earliest known eta is due, XAUTOCLAIM every
visibility_timeout/2), and BLOCK is bounded by whichever comes first, so nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiotask._time import monotonic, now
from aiotask._urls import redact
from aiotask.brokers import _redis_lua as lua
from aiotask.brokers._redis_conn import connection_class
from aiotask.brokers.base import BrokerCapabilities, DeadLetter, Delivery, Outgoing
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from redis.asyncio.connection import AbstractConnection
    from redis.commands.core import AsyncScript

    from aiotask.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
Command = tuple[Any, ...]

#: Entries a dead-letter stream keeps (approximately); older ones are trimmed.
DEAD_MAXLEN = 10_000
#: Delayed messages one mover call promotes; more are moved by the next receive.
MOVE_BATCH = 1000
_CAPPED = ("MAXLEN", "~", DEAD_MAXLEN, "*")
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: Seconds a non-blocking round trip may take before the server counts as unreachable.
OP_TIMEOUT = 10.0
_warned: set[str] = set()


def _band(priority: int) -> int:
    """Priority 0-9 to a stream band: 0-3 low, 4-6 normal, 7-9 high (read high first)."""
    return 2 if priority >= 7 else 1 if priority >= 4 else 0


@dataclass(frozen=True, slots=True)
class _Keys:
    queue: str
    streams: tuple[str, str, str]  # by band, low to high
    delayed: str
    dead: str


class RedisStreamsBroker:
    """A Broker over Redis Streams: at-least-once, leases renewed with XCLAIM, push wake-ups."""

    capabilities = BrokerCapabilities(priorities=True, max_priority=9, native_delay=True, push=True)

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        self._url = url
        self._prefix = settings.key_prefix
        self._group = app_name
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._lease_ms = max(1, int(settings.visibility_timeout * 1000))
        self._reclaim_every = settings.visibility_timeout / 2
        self._max_deliveries = settings.max_deliveries
        self._unreachable = settings.broker_unreachable_timeout
        self._keys_cache: dict[str, _Keys] = {}
        self._stream_queue: dict[bytes, tuple[str, str]] = {}  # stream key -> (queue, key)
        self._ready: set[str] = set()  # queues whose consumer groups exist
        self._next_due: dict[str, float] = {}  # queue -> earliest known eta (unix s)
        self._next_reclaim = 0.0
        self._cursors: dict[str, bytes] = {}  # stream -> XAUTOCLAIM cursor
        #: consumers owning nothing and idle this long are dropped from the group
        self._prune_ms = max(60_000, 10 * self._lease_ms)
        self._read_lock = asyncio.Lock()
        self._markers: dict[str, list[bytes]] = {}  # wake-up entries to ack
        self._spare: list[Delivery] = []
        self._redis: Redis | None = None
        self._reader: AbstractConnection | None = None
        self._scripts: dict[str, AsyncScript] = {}

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _map_errors(self) -> Iterator[None]:
        """Redis errors -> BrokerConnectionError naming the (redacted) server."""
        try:
            yield
        except _RETRYABLE as exc:
            raise BrokerConnectionError(
                f"cannot reach Redis at {redact(self._url)}: {exc}; is the server running?"
            ) from exc
        except RedisError as exc:
            raise BrokerConnectionError(
                f"Redis at {redact(self._url)} answered with an error: {exc}"
            ) from exc

    def _client(self) -> Redis:
        if self._redis is None:
            raise BrokerConnectionError("the Redis broker is not connected: call connect() first")
        return self._redis

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, reconnecting with backoff for up to broker_unreachable_timeout seconds."""
        started: float | None = None
        delay = 0.05
        while True:
            try:
                with self._map_errors():
                    return await op()
            except BrokerConnectionError as exc:
                if not isinstance(exc.__cause__, _RETRYABLE):
                    raise
                mono = monotonic()
                if started is None:
                    started = mono
                    logger.warning("Redis at %s unreachable, retrying: %s", redact(self._url), exc)
                if mono - started >= self._unreachable:
                    raise BrokerConnectionError(
                        f"Redis at {redact(self._url)} unreachable for {self._unreachable:g}s "
                        f"(broker_unreachable_timeout): {exc.__cause__}"
                    ) from exc.__cause__
                self._ready.clear()  # after a restart without persistence groups are gone
                await asyncio.sleep(min(delay, started + self._unreachable - mono))
                delay = min(delay * 2, 2.0)

    async def _run(self, cmds: Sequence[Command], ignore: tuple[str, ...] = ()) -> list[Any]:
        """One non-transactional pipeline; re-runs scripts the server forgot (NOSCRIPT)."""
        results = await self._pipeline(cmds)
        failed = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if failed:
            await self._load_scripts()
            again = await self._pipeline([cmds[i] for i in failed])
            for i, result in zip(failed, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception) and not str(result).startswith(ignore):
                raise result
        return results

    async def _pipeline(self, cmds: Sequence[Command], transaction: bool = False) -> list[Any]:
        pipe = self._client().pipeline(transaction=transaction)
        for cmd in cmds:
            # XCLAIM ... JUSTID replies with ids only; tell redis-py's parser so
            pipe.execute_command(*cmd, parse_justid=cmd[0] == "XCLAIM")
        async with asyncio.timeout(OP_TIMEOUT):  # a hung server becomes a retryable error
            return list(await pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        client = self._client()
        pipe = client.pipeline(transaction=False)
        for script in self._scripts.values():
            pipe.script_load(script.script)
        await pipe.execute()

    def _keys(self, queue: str) -> _Keys:
        keys = self._keys_cache.get(queue)
        if keys is None:
            base = f"{self._prefix}:{{{queue}}}"
            streams = (f"{base}:s0", f"{base}:s1", f"{base}:s2")
            keys = _Keys(queue, streams, f"{base}:delayed", f"{base}:dead")
            self._keys_cache[queue] = keys
            for stream in streams:
                self._stream_queue[stream.encode()] = (queue, stream)
        return keys

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._redis is not None:
            return
        self._redis = Redis.from_url(
            self._url,
            connection_class=connection_class(self._url),
            protocol=2,
            retry=Retry(NoBackoff(), 0),  # we retry ourselves, within broker_unreachable_timeout
            # No socket_timeout: redis-py would route every write through asyncio.wait_for,
            # which on Python 3.11 can swallow a cancellation (worker shutdown hangs). Hung
            # servers are caught by our own asyncio.timeout guards (OP_TIMEOUT, BLOCK + 10 s).
            socket_timeout=None,
            socket_connect_timeout=5.0,
        )
        for name in ("SCHEDULE", "MOVE_DUE", "RECLAIM", "HAND_BACK", "READ_BANDS"):
            self._scripts[name] = self._redis.register_script(getattr(lua, name))
        try:
            with self._map_errors():
                await self._load_scripts()
        except BrokerConnectionError:
            await self._redis.aclose()
            self._redis = None
            raise
        await self._check_server()

    async def _check_server(self) -> None:
        """Warn once when the server may lose queued messages (no AOF, or evicting keys)."""
        if redact(self._url) in _warned:
            return
        _warned.add(redact(self._url))
        try:
            with self._map_errors():
                results = await self._pipeline(
                    [("CONFIG", "GET", "appendonly"), ("CONFIG", "GET", "maxmemory-policy")]
                )
        except BrokerConnectionError:
            return
        if any(isinstance(r, Exception) for r in results):
            return  # CONFIG renamed or disabled (managed Redis): nothing to check
        appendonly, policy = (_text(r[1]) if len(r) == 2 else "" for r in results)
        if appendonly == "no":
            logger.warning(
                "Redis at %s has appendonly=no: a restart loses queued messages; "
                "set 'appendonly yes' (and appendfsync everysec) in redis.conf",
                redact(self._url),
            )
        if policy != "noeviction":
            logger.warning(
                "Redis at %s has maxmemory-policy=%s: it may evict queued messages; "
                "set 'maxmemory-policy noeviction'",
                redact(self._url),
                policy,
            )

    async def close(self) -> None:
        """Hand back what this consumer still owns (so it runs again at once), then close."""
        if self._redis is None:
            return
        streams = [s for q in self._ready for s in self._keys(q).streams]
        sha = self._scripts["HAND_BACK"].sha
        try:
            with self._map_errors():
                cmds = [("EVALSHA", sha, 1, s, self._group, self._consumer) for s in streams]
                await self._run(cmds, ignore=("NOGROUP",))
        except BrokerConnectionError as exc:
            logger.warning("could not hand back unsettled messages on close: %s", exc)
        self._spare.clear()
        if self._reader is not None:
            await self._reader.disconnect()
            self._reader = None
        await self._redis.aclose()
        self._redis = None

    # -- producing ------------------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """XADD (or ZADD for a future eta) the whole batch in one round trip."""
        cmds: list[Command] = []
        delayed: dict[str, list[Any]] = {}
        wall = now()
        for out in batch:
            keys = self._keys_cache.get(out.queue) or self._keys(out.queue)
            band = _band(out.priority)
            if out.eta is not None and out.eta > wall:
                mid = out.message_id.encode()
                member = b"%d%d:%s%s" % (band, len(mid), mid, out.body)
                delayed.setdefault(out.queue, []).extend((int(out.eta * 1000), member))
                self._next_due[out.queue] = min(self._next_due.get(out.queue, math.inf), out.eta)
            else:
                cmds.append(("XADD", keys.streams[band], "*", "m", out.message_id, "b", out.body))
        sha = self._scripts["SCHEDULE"].sha if delayed else ""
        for queue, args in delayed.items():
            keys = self._keys(queue)
            cmds.append(("EVALSHA", sha, 2, keys.delayed, keys.streams[0], *args))
        if cmds:
            await self._retrying(lambda: self._run(cmds))

    # -- consuming ------------------------------------------------------------------------

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if self._spare:
            got = self._take_spare(queues, limit)
            if got:
                return got
        qkeys = [self._keys(q) for q in queues]
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
        claimed = await self._housekeeping(qkeys, limit)
        wall, mono = now(), monotonic()
        due = min(self._next_due.get(k.queue, 0.0) for k in qkeys) - wall
        wait = max(min(due, self._next_reclaim - mono), 0.001)
        streams = [s for k in qkeys for s in reversed(k.streams)]  # high band first
        try:
            # First a strict-priority look: bands in order, exactly `limit` at most, no BLOCK.
            sha = self._scripts["READ_BANDS"].sha
            look = ("EVALSHA", sha, len(streams), *streams, self._group, self._consumer, limit)
            [reply] = await self._run([look])
            if reply or claimed:
                got = await self._parse(reply) if reply else []
                return self._cap(got + claimed, limit)
            # Every stream is empty: BLOCK on all of them, one entry per band at most.
            reader = self._reader
            if reader is None:
                pool = self._client().connection_pool
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
        await self._run(cmds, ignore=("BUSYGROUP",))
        self._ready.update(k.queue for k in qkeys)

    async def _housekeeping(self, qkeys: list[_Keys], limit: int) -> list[Delivery]:
        """Ack wake-ups, move due delayed messages, and (when due) reclaim idle entries."""
        wall, mono = now(), monotonic()
        reclaim = mono >= self._next_reclaim
        cmds: list[Command] = []
        for stream, ids in self._markers.items():
            cmds += [("XACK", stream, self._group, *ids), ("XDEL", stream, *ids)]
        markers = len(cmds)
        movers = [k for k in qkeys if reclaim or self._next_due.get(k.queue, 0.0) <= wall]
        sha = self._scripts["MOVE_DUE"].sha
        cmds += [
            ("EVALSHA", sha, 4, k.delayed, *k.streams, int(wall * 1000), MOVE_BATCH) for k in movers
        ]
        claims = [(k, s) for k in qkeys for s in k.streams] if reclaim else []
        sha = self._scripts["RECLAIM"].sha
        who = (self._group, self._consumer, self._lease_ms, limit, self._max_deliveries)
        fixed = (*who, DEAD_MAXLEN, self._prune_ms)
        cmds += [
            ("EVALSHA", sha, 2, s, k.dead, *fixed, k.queue, wall, self._cursors.get(s, "0-0"))
            for k, s in claims
        ]
        if not cmds:
            return []
        results = await self._run(cmds, ignore=("NOGROUP",))
        self._markers.clear()
        for k, head in zip(movers, results[markers:], strict=False):
            self._next_due[k.queue] = float(head) / 1000 if head is not None else math.inf
        if reclaim:
            self._next_reclaim = mono + self._reclaim_every
        return self._claimed(claims, results[markers + len(movers) :])

    def _claimed(self, claims: list[tuple[_Keys, str]], results: list[Any]) -> list[Delivery]:
        got: list[Delivery] = []
        for (k, stream), claimed in zip(claims, results, strict=True):
            if isinstance(claimed, Exception):  # NOGROUP: the server lost the group
                self._ready.clear()
                continue
            self._cursors[stream] = claimed[0]  # resume the PEL scan where it stopped
            for entry_id, mid, body, count in claimed[1]:
                got.append(Delivery(body, k.queue, _text(mid), int(count), (stream, entry_id)))
        if got:
            logger.warning("took over %d message(s) whose lease lapsed", len(got))
        return got

    async def _parse(self, reply: list[Any]) -> list[Delivery]:
        got: list[Delivery] = []
        over: list[Delivery] = []
        for stream_key, entries in reply:
            queue, stream = self._stream_queue[stream_key]
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
                mid = _text(fields.get(b"m", entry_id))
                d = Delivery(body, queue, mid, int(fields.get(b"n", 0)) + 1, (stream, entry_id))
                (over if d.deliveries > self._max_deliveries else got).append(d)
        if over:
            await self._bury(over, f"delivered too often (max_deliveries={self._max_deliveries})")
        return got

    # -- settling -------------------------------------------------------------------------

    def _by_stream(self, deliveries: Sequence[Delivery]) -> dict[str, list[bytes]]:
        by: dict[str, list[bytes]] = {}
        for d in deliveries:
            stream, entry_id = _token(d)
            by.setdefault(stream, []).append(entry_id)
        return by

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """XACK + XDEL (streams do not grow) for the batch in one round trip."""
        cmds: list[Command] = []
        for stream, ids in self._by_stream(deliveries).items():
            cmds += [("XACK", stream, self._group, *ids), ("XDEL", stream, *ids)]
        if cmds:
            await self._retrying(lambda: self._run(cmds, ignore=("NOGROUP",)))

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
        if not deliveries:
            return
        if not requeue:
            await self._bury(deliveries, reason or "rejected")
            return
        cmds: list[Command] = []
        for d in deliveries:
            stream, entry_id = _token(d)
            # a hand-back is not a failed delivery: carry the count it had before this one
            extra = ("n", d.deliveries - 1) if d.deliveries > 1 else ()
            cmds += [
                ("XADD", stream, "*", "m", d.message_id, "b", d.body, *extra),
                ("XACK", stream, self._group, entry_id),
                ("XDEL", stream, entry_id),
            ]
        await self._retrying(lambda: self._multi(cmds))

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
        for result in await self._pipeline(cmds, transaction=True):
            if isinstance(result, Exception) and not str(result).startswith("NOGROUP"):
                raise result

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Reset the idle time of owned entries (and of spare ones held for the next receive)."""
        cmds: list[Command] = [
            ("XCLAIM", stream, self._group, self._consumer, 0, *ids, "JUSTID")
            for stream, ids in self._by_stream([*deliveries, *self._spare]).items()
        ]
        if cmds:
            await self._retrying(lambda: self._run(cmds, ignore=("NOGROUP",)))

    # -- inspection -----------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        """Drop every message of the queue, delayed ones included; returns how many."""
        k = self._keys(queue)
        cmds: list[Command] = [("XLEN", s) for s in k.streams]
        cmds += [("ZCARD", k.delayed)]
        cmds += [("XTRIM", s, "MAXLEN", 0) for s in k.streams]
        cmds += [("DEL", k.delayed)]
        results = await self._retrying(lambda: self._pipeline(cmds, transaction=True))
        return sum(int(r) for r in results[:4])

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        cmd = ("XRANGE", self._keys(queue).dead, "-", "+", "COUNT", limit)
        [entries] = await self._retrying(lambda: self._run([cmd]))
        out = []
        for _id, fields in entries:
            mid, reason = fields.get(b"message_id", b""), fields.get(b"reason", b"")
            out.append(DeadLetter(_text(mid), fields.get(b"body", b""), _text(reason)))
        return out


def _token(delivery: Delivery) -> tuple[str, bytes]:
    """The (stream key, entry id) this broker put in Delivery.token."""
    return cast("tuple[str, bytes]", delivery.token)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
