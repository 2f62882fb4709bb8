"""redis:// in kombu's Redis transport layout (`celery_compat`), so Celery and aiotask workers
share a queue.

kombu's layout, followed key for key (names under kombu's `global_keyprefix`, here the URL's
`?global_keyprefix=` query parameter, default none):
- a queue `q` is a list `q` (priority 0-2) and lists `q\\x06\\x163`, `q\\x06\\x166`,
  `q\\x06\\x169`; producers LPUSH, consumers pop the right end, draining lower priority
  numbers first (kombu's order);
- a queue's binding is a member `q\\x06\\x16\\x06\\x16q` of the set `_kombu.binding.q`;
- a delivered message sits in the hash `unacked` (tag -> `[payload, exchange, routing_key]`)
  and the zset `unacked_index` (tag -> delivery time) until acked; one older than the
  visibility timeout is pushed back to its list with `redelivered` set, by whichever worker
  (Celery's or aiotask's) looks first.

Differences from kombu, both safer: taking a message and recording it unacked is one Lua call
(kombu pops, then records), and a restore moves an entry only if it is still the one read
(compare-and-move), so a Celery worker and an aiotask worker restoring at once move it once.
`extend` refreshes a running message's index score, so aiotask never restores its own running
work; Celery workers do not extend theirs. Set the same visibility timeout on both sides
(`visibility_timeout` here, `broker_transport_options={"visibility_timeout": ...}` in Celery).
Byte-level: it reads only kombu's transport fields (delivery tag, delivery info, priority).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio

from aiotask import _tls
from aiotask._redis.client import SharedClient, map_errors
from aiotask.brokers._kombu_redis_lua import DEAD, RESTORE, TAKE
from aiotask.brokers.base import BrokerCapabilities, DeadLetter, Delivery, Outgoing, QueueStats
from aiotask.exceptions import BrokerConnectionError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from aiotask.settings import Settings

SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
DEAD_SUFFIX = ".dead"
#: Poll back-off while the lists are empty (the take is a Lua call, not a blocking pop).
POLL_MIN, POLL_MAX = 0.02, 0.5
#: Unacked entries restored per check.
RESTORE_BATCH = 100


def split_prefix(url: str) -> tuple[str, str]:
    """(the URL without `global_keyprefix`, the prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "".join(v for k, v in query if k == "global_keyprefix")
    rest = urlencode([(k, v) for k, v in query if k != "global_keyprefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def list_key(queue: str, priority: int) -> str:
    """kombu's list for a priority: the step at or below it; step 0 is the bare queue name."""
    step = PRIORITY_STEPS[bisect.bisect(PRIORITY_STEPS, max(0, min(priority, 9))) - 1]
    return f"{queue}{SEP}{step}" if step else queue


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class KombuRedisBroker:
    """A Broker on Redis with kombu's transport keys."""

    capabilities = BrokerCapabilities(
        priorities=True, max_priority=9, native_delay=False, push=False, leases=True
    )

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        plain, self._prefix = split_prefix(url)
        self._url = plain
        resolved = _tls.for_broker(settings, plain)
        self.shared_client = SharedClient(resolved.url, resolved.tls)
        self._settings = settings
        self._redis: Redis | None = None
        self._scripts: tuple[AsyncScript, ...] | None = None
        self._bound: set[str] = set()
        self._idle = POLL_MIN
        self._restored_at = 0.0

    def _k(self, name: str) -> str:
        return self._prefix + name

    def _client(self) -> Redis:
        if self._redis is None:
            raise BrokerConnectionError("the Redis broker is not connected")
        return self._redis

    def _script(self, index: int) -> AsyncScript:
        if self._scripts is None:
            raise BrokerConnectionError("the Redis broker is not connected")
        return self._scripts[index]

    async def connect(self) -> None:
        if self._redis is not None:
            return
        client = self.shared_client.acquire()
        if not isinstance(client, redis.asyncio.Redis):  # kombu's layout spans slots
            raise ConfigurationError(
                "celery_compat needs a single Redis server: kombu's "
                "Redis layout is not supported on a Redis Cluster"
            )
        self._redis = client
        register = client.register_script
        self._scripts = (register(TAKE), register(RESTORE), register(DEAD))
        with map_errors(self._url, "Redis broker"):
            await client.ping()

    async def close(self) -> None:
        if self._redis is not None:
            self._redis = None
            self._scripts = None
            await self.shared_client.release()

    async def _bind(self, queues: Sequence[str]) -> None:
        """kombu's declaration: the queue's exchange (same name) routes its name to it."""
        new = [q for q in queues if q not in self._bound]
        if not new:
            return
        pipe = self._client().pipeline(transaction=False)
        for q in new:
            pipe.sadd(self._k(f"_kombu.binding.{q}"), f"{q}{SEP}{SEP}{q}")
        with map_errors(self._url, "Redis broker"):
            await pipe.execute()
        self._bound.update(new)

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        await self._bind(sorted({o.queue for o in batch}))
        pipe = self._client().pipeline(transaction=True)
        for out in batch:
            pipe.lpush(self._k(list_key(out.queue, _priority(out.body, out.priority))), out.body)
        with map_errors(self._url, "Redis broker"):
            await pipe.execute()

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        await self._bind(queues)
        keys = [self._k(list_key(q, p)) for p in PRIORITY_STEPS for q in queues]
        by_key = {self._k(list_key(q, p)): q for p in PRIORITY_STEPS for q in queues}
        unacked, index = self._k("unacked"), self._k("unacked_index")
        while True:
            with map_errors(self._url, "Redis broker"):
                # shielded: a cancelled receive still records what it took as unacked
                # (restored after the visibility timeout), never drops it
                reply = await asyncio.shield(
                    self._script(0)(keys=[unacked, index, *keys], args=[time.time(), limit])
                )
            if reply:
                self._idle = POLL_MIN
                return [
                    _delivery(by_key[_text(reply[i])], _text(reply[i + 1]), reply[i + 2])
                    for i in range(0, len(reply), 3)
                ]
            await asyncio.sleep(self._idle)
            self._idle = min(self._idle * 2, POLL_MAX)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [str(d.token) for d in deliveries]
        pipe = self._client().pipeline(transaction=True)
        pipe.zrem(self._k("unacked_index"), *tags)
        pipe.hdel(self._k("unacked"), *tags)
        with map_errors(self._url, "Redis broker"):
            await pipe.execute()

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        unacked, index = self._k("unacked"), self._k("unacked_index")
        for d in deliveries:
            tag = str(d.token)
            with map_errors(self._url, "Redis broker"):
                if requeue:  # kombu's reject(requeue=True): back to the far end
                    entry = await self._client().hget(unacked, tag)
                    if entry is not None:
                        await self._restore(tag, entry, far=not counted)
                    continue
                record = orjson.dumps(
                    {"reason": reason, "died_at": time.time(), "payload": d.body.decode()}
                )
                dead = self._k(d.queue + DEAD_SUFFIX)
                await self._script(2)(keys=[unacked, index, dead], args=[tag, record])

    async def _restore(self, tag: str, entry: bytes | str, *, far: bool) -> bool:
        """Put an unacked message back on its list, flagged redelivered (as kombu does)."""
        try:
            payload, exchange, routing_key = orjson.loads(entry)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return False
        queues = await self._lookup(str(exchange or ""), str(routing_key or ""))
        if not isinstance(payload, dict) or not queues:
            return False
        payload.setdefault("headers", {})["redelivered"] = True
        info = payload.setdefault("properties", {}).setdefault("delivery_info", {})
        info["redelivered"] = True
        body = orjson.dumps(payload)
        target = self._k(list_key(queues[0], _priority(body, 0)))
        keys = [self._k("unacked"), self._k("unacked_index"), target]
        moved = await self._script(1)(keys=keys, args=[tag, entry, body, "1" if far else "0"])
        return bool(moved)

    async def _lookup(self, exchange: str, routing_key: str) -> list[str]:
        """kombu's routing: the default exchange routes to the queue named by the key."""
        if not exchange:
            return [routing_key] if routing_key else []
        members = await self._client().smembers(self._k(f"_kombu.binding.{exchange}"))
        found = []
        for member in members:
            rk, _, queue = _text(member).split(SEP, 2)
            if rk == routing_key or not rk:
                found.append(queue)
        return found

    async def heartbeat(self) -> None:
        """Restore unacked messages older than the visibility timeout (a dead consumer's)."""
        await self.restore_visible()

    async def restore_visible(self) -> int:
        ceil = time.time() - self._settings.visibility_timeout
        client = self._client()
        with map_errors(self._url, "Redis broker"):
            tags = await client.zrangebyscore(
                self._k("unacked_index"), "-inf", ceil, start=0, num=RESTORE_BATCH
            )
            moved = 0
            for raw_tag in tags:
                tag = _text(raw_tag) if isinstance(raw_tag, bytes | str) else str(raw_tag)
                entry = await client.hget(self._k("unacked"), tag)
                if entry is None:
                    await client.zrem(self._k("unacked_index"), tag)
                elif await self._restore(tag, entry, far=False):
                    moved += 1
        return moved

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        now = time.time()
        with map_errors(self._url, "Redis broker"):
            await self._client().zadd(
                self._k("unacked_index"), {str(d.token): now for d in deliveries}, xx=True
            )

    async def purge(self, queue: str) -> int:
        keys = [self._k(list_key(queue, p)) for p in PRIORITY_STEPS]
        pipe = self._client().pipeline(transaction=True)
        for key in keys:
            pipe.llen(key)
        pipe.delete(*keys)
        with map_errors(self._url, "Redis broker"):
            counts = await pipe.execute()
        return int(sum(counts[:-1]))

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        with map_errors(self._url, "Redis broker"):
            raws = await self._client().lrange(self._k(queue + DEAD_SUFFIX), 0, limit - 1)
        return [_dead(queue, raw) for raw in raws]

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        removed = 0
        with map_errors(self._url, "Redis broker"):
            for d in dead:
                key = self._k(queue + DEAD_SUFFIX)
                removed += int(await self._client().lrem(key, 1, d.token))  # type: ignore[arg-type]
        return removed

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        pipe = self._client().pipeline(transaction=False)
        for q in queues:
            for p in PRIORITY_STEPS:
                pipe.llen(self._k(list_key(q, p)))
            pipe.llen(self._k(q + DEAD_SUFFIX))
        with map_errors(self._url, "Redis broker"):
            counts = await pipe.execute()
        step = len(PRIORITY_STEPS) + 1
        return [
            QueueStats(
                q,
                int(sum(counts[i * step : i * step + step - 1])),
                None,
                None,
                int(counts[i * step + step - 1]),
            )
            for i, q in enumerate(queues)
        ]

    async def known_queues(self) -> list[str]:
        return sorted(self._bound)


def _priority(body: bytes, default: int) -> int:
    try:
        value: Any = orjson.loads(body).get("properties", {}).get("priority")
    except (orjson.JSONDecodeError, AttributeError):
        return default
    return int(value) if isinstance(value, int) else default


def _delivery(queue: str, tag: str, raw: bytes | str) -> Delivery:
    body = raw if isinstance(raw, bytes) else raw.encode()
    try:
        doc = orjson.loads(body)
        headers = doc.get("headers") or {}
        ident = str(headers.get("id") or doc["properties"].get("correlation_id") or tag)
        redelivered = bool(headers.get("redelivered"))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        ident, redelivered = tag, False
    return Delivery(body, queue, ident, 2 if redelivered else 1, tag)


def _dead(queue: str, raw: bytes | str) -> DeadLetter:
    record = orjson.loads(raw)
    payload = str(record.get("payload", "")).encode()
    ident = _delivery(queue, "", payload).message_id
    return DeadLetter(
        ident, payload, str(record.get("reason", "")), queue, record.get("died_at"), token=raw
    )
