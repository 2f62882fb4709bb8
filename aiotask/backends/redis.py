"""redis:// and rediss:// result backend: one key per task, Lua for atomicity, pub/sub for waits.

A result key holds one flag byte (`1` ready, `0` not) and the record's bytes, with its ttl; the
store script keeps the first ready value and PUBLISHes it on a channel named like the key.
Waits share ONE pub/sub connection per backend: subscribe, then read the key (a record stored
before the wait is seen), then let the single reader task resolve the future. See docs/redis.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import NoScriptError, RedisError

from aiotask import _tls
from aiotask._backoff import Backoff
from aiotask._redis import cluster
from aiotask._redis.client import SharedClient, map_errors
from aiotask.backends._redis_groups import ADD_TO_GROUPS, GROUPS_SENT
from aiotask.backends._redis_pipe import Pipe, Unsupported
from aiotask.backends._redis_replies import Replies
from aiotask.backends._redis_subscriber import Subscriber
from aiotask.backends.base import (
    EncodedResult,
    GroupProgress,
    MemberReport,
    ResultRecord,
    decode_record,
)
from aiotask.exceptions import BrokerConnectionError, ResultTimeout
from aiotask.protocol import new_id
from aiotask.states import FAILURE, READY_STATES, SUCCESS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.commands.core import AsyncScript

    from aiotask._redis.client import Client
    from aiotask.backends._coord_redis import RedisCoordinationStore
    from aiotask.backends._history_redis import RedisHistoryStore
    from aiotask.backends._lock_redis import RedisLockStore
    from aiotask.backends._schedule_redis import RedisScheduleStore
    from aiotask.settings import Settings

logger = logging.getLogger(__name__)

#: KEYS: result keys. ARGV: value (flag byte + data), ttl_ms, reply channel ('' for none), ...
#: per key. A ready record is published on the key's channel and, when the producer named
#: one, on its reply channel as `<len(key)> <key><data>` (one channel per producer process).
_STORE = """
for i, key in ipairs(KEYS) do
  local value = ARGV[3 * i - 2]
  local cur = redis.call('GET', key)
  if not (cur and string.sub(cur, 1, 1) == '1') then
    redis.call('SET', key, value, 'PX', ARGV[3 * i - 1])
    if string.sub(value, 1, 1) == '1' then
      local data = string.sub(value, 2)
      redis.call('PUBLISH', key, data)
      local reply = ARGV[3 * i]
      if reply ~= '' then redis.call('PUBLISH', reply, #key .. ' ' .. key .. data) end
    end
  end
end
return #KEYS
"""

#: KEYS: group hash. ARGV: size, ttl_ms, body (optional).
_OPEN_GROUP = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'size', ARGV[1])
  if ARGV[3] then redis.call('HSET', KEYS[1], 'body', ARGV[3]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

#: Seconds one command may take on a Redis Cluster before it counts as a lost connection.
OP_TIMEOUT = 10.0


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBackend:
    """A ResultBackend on Redis: batched Lua writes, MGET reads, multiplexed pub/sub waits."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        #: the client (connection pool); shared with a broker on the same server
        resolved = _tls.for_backend(settings, url)
        self.shared_client = SharedClient(resolved.url, resolved.tls)
        self._prefix = settings.key_prefix
        #: what a reply channel's name starts with (Replies): a store pushes to no other channel
        self._reply_prefix = f"{self._prefix}:reply:"
        self._redis: Client | None = None
        self._scripts: tuple[AsyncScript, ...] | None = None
        self._sub: Subscriber | None = None
        #: this process's reply channel: results it waits for are pushed there
        self._replies: Replies | None = None
        #: stores and waits' reads on a single-node server (None on a cluster: the pool)
        self._pipe: Pipe | None = None
        #: reads asked for in this loop iteration: key -> one future per caller
        self._gets: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def use_client_of(self, broker: object) -> None:
        """Share the broker's connection pool when it talks to the same server (same URL and
        TLS options): one pool for both, not two. Call before connect(); else left alone."""
        shared = getattr(broker, "shared_client", None)
        mine = self.shared_client
        if (
            isinstance(shared, SharedClient)
            and (shared.url, shared.tls) == (mine.url, mine.tls)
            and self._redis is None
        ):
            self.shared_client = shared

    def _map_errors(self) -> contextlib.AbstractContextManager[None]:
        return map_errors(self._url, "result backend Redis")

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """map_errors, and on a Redis Cluster a deadline: a command caught in a failover can
        hang in redis-py's cluster client; as a timeout it is a retryable connection error."""
        with self._map_errors():
            if cluster.is_cluster(self._redis):
                async with asyncio.timeout(OP_TIMEOUT):
                    yield
            else:
                yield

    def _client(self) -> Client:
        if self._redis is None:
            raise BrokerConnectionError("the Redis result backend is not connected")
        return self._redis

    def _script(self, index: int) -> AsyncScript:
        if self._scripts is None:
            raise BrokerConnectionError("the Redis result backend is not connected")
        return self._scripts[index]

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}:result:{task_id}"

    def _group_keys(self, group_id: str) -> tuple[str, str]:
        base = f"{self._prefix}:group:{{{group_id}}}"
        return base, f"{base}:members"

    async def connect(self) -> None:
        if self._redis is not None:
            return
        self._redis = self.shared_client.acquire()
        register = self._redis.register_script
        self._scripts = (
            register(_STORE),
            register(_OPEN_GROUP),
            register(ADD_TO_GROUPS),
            register(GROUPS_SENT),
        )
        client = self._redis
        if cluster.is_cluster(client):  # PUBLISH reaches every node: subscribe on any one
            make: Callable[[], AbstractConnection] = lambda: cluster.connection_to_any(client)  # noqa: E731
        else:
            make = cast("Redis", client).connection_pool.make_connection
            self._pipe = Pipe(make)
        self._replies = Replies(f"{self._reply_prefix}{new_id()}".encode())
        self._sub = Subscriber(make, self._fetch_many, self._replies)
        try:
            async with self._guard():
                if self._pipe is not None:  # opens the connection the first task's store uses
                    try:
                        await self._pipe.call("PING")
                    except Unsupported:  # a redis-py this was not written for: the pool
                        await self._pipe.close()
                        self._pipe = None
                        await self._redis.ping()
                else:
                    await self._redis.ping()
        except BrokerConnectionError:
            await self.close()
            raise

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
            self._sub = None
        if self._pipe is not None:
            await self._pipe.close()
            self._pipe = None
        for task in list(self._tasks):
            task.cancel()
        if self._redis is not None:
            self._redis = None
            await self.shared_client.release()

    async def store(self, results: Sequence[EncodedResult]) -> None:
        """One script call for the batch: first ready writer wins; ready records are published."""
        if not results:
            return
        # per result: its key, then its flagged bytes, TTL in ms and reply channel (the same
        # bulk strings as `_key`, `ready` and `_ms` give, built inline: once per task)
        keys: list[str] = []
        args: list[bytes | str] = []
        prefix = self._key("")
        ttl, ms = None, b""
        for r in results:
            if r.ttl != ttl:
                ttl, ms = r.ttl, b"%d" % _ms(r.ttl)
            keys.append(prefix + r.task_id)
            flagged = b"1" + r.data if r.state in READY_STATES else b"0" + r.data
            reply = r.reply_to
            # a message can name any string: only a reply channel of this prefix is pushed to,
            # never, say, another task's result channel
            args += (flagged, ms, reply if reply and reply.startswith(self._reply_prefix) else b"")
        pipe = self._pipe
        if pipe is not None:  # a single node: written now, on the dedicated connection
            with self._map_errors():
                await self._eval(pipe, 0, keys, args)
            return
        async with self._guard():
            # one call per slot on a cluster, all in flight at once (each goes to its node)
            await asyncio.gather(
                *(
                    self._script(0)(
                        keys=[keys[i] for i in idx],
                        args=[a for i in idx for a in args[3 * i : 3 * i + 3]],
                    )
                    for idx in self._slots(keys)
                )
            )

    async def _eval(
        self, pipe: Pipe, index: int, keys: Sequence[str], args: Sequence[bytes | str]
    ) -> Any:
        """EVALSHA on the pipe; after NOSCRIPT (a restarted or flushed server) SCRIPT LOAD
        and EVALSHA again, as redis-py's Script does."""
        script = self._script(index)
        try:
            return await pipe.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await pipe.call("SCRIPT", "LOAD", script.script)
            return await pipe.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def _slots(self, keys: Sequence[str]) -> list[list[int]]:
        """Indexes of `keys` per script call: all at once, or one call per hash slot on a
        Redis Cluster (a script may touch keys of one slot only)."""
        if cluster.is_cluster(self._redis):
            return list(cluster.by_slot(keys).values())
        return [list(range(len(keys)))]

    async def get(self, task_id: str) -> ResultRecord | None:
        async with self._guard():
            raw = await self._client().get(self._key(task_id))
        return decode_record(_bytes(raw)[1:]) if raw else None

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        if not task_ids:
            return []
        raws = await self._fetch_many([self._key(t) for t in task_ids])
        return [decode_record(raw[1:]) if raw else None for raw in raws]

    async def _fetch_many(self, keys: Sequence[str]) -> list[bytes | None]:
        client = self._client()
        async with self._guard():
            if cluster.is_cluster(client):
                values = await client.mget_nonatomic(keys)
            else:
                values = await client.mget(keys)
            return [None if v is None else _bytes(v) for v in values]

    def _fetch(self, key: str) -> asyncio.Future[bytes | None]:
        """GET coalesced with every other GET of this loop iteration into one MGET.

        Each caller gets its own future: a cancelled wait cancels only its own, so it needs
        no shield (one loop iteration less per read)."""
        loop = asyncio.get_running_loop()
        gets = self._gets
        if not gets:
            loop.call_soon(self._flush_gets)
        fut: asyncio.Future[bytes | None] = loop.create_future()
        waiting = gets.get(key)
        if waiting is None:
            gets[key] = [fut]
        else:
            waiting.append(fut)
        return fut

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _flush_gets(self) -> None:
        """The iteration's reads as one MGET: written from this callback on a single node
        (no task to start), through the pool in a task on a cluster."""
        batch, self._gets = self._gets, {}
        pipe = self._pipe
        if pipe is not None:
            pipe.submit(("MGET", *batch), lambda reply, error: self._got(batch, reply, error))
        elif self._redis is not None:
            self._spawn(self._fetch_batch(batch))
        else:
            self._got(batch, None, BrokerConnectionError("the Redis result backend was closed"))

    async def _fetch_batch(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self._fetch_many(list(batch))
        except BrokerConnectionError as exc:
            self._got(batch, None, exc)
            return
        self._got(batch, values, None)

    def _got(
        self,
        batch: dict[str, list[asyncio.Future[bytes | None]]],
        values: Sequence[bytes | str | None] | None,
        error: BaseException | None,
    ) -> None:
        """Resolve each caller's future with its key's value (or the error, mapped)."""
        if error is not None or values is None:
            mapped = self._mapped(error)
            for futs in batch.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(mapped)
            return
        for futs, value in zip(batch.values(), values, strict=True):
            raw = None if value is None else _bytes(value)
            for fut in futs:
                if not fut.done():
                    fut.set_result(raw)

    def _mapped(self, error: BaseException | None) -> BaseException:
        """`error` as the BrokerConnectionError map_errors makes of it."""
        try:
            with self._map_errors():
                raise error or BrokerConnectionError("no reply from the result backend")
        except BaseException as exc:  # returned, to be set on the futures
            return exc

    def expect(self, task_id: str) -> str | None:
        """A task is being sent and its result likely waited for: the channel to name in its
        message (`Message.reply_to`), or None (this process has not waited lately)."""
        replies, sub = self._replies, self._sub
        if replies is None or sub is None:
            return None
        if not replies.expect(self._key(task_id).encode(), asyncio.get_running_loop()):
            return None
        sub.listen_replies()
        return replies.channel.decode()

    async def wait(self, task_id: str, timeout: float | None) -> ResultRecord:
        key = self._key(task_id)
        sub, replies = self._sub, self._replies
        if sub is None or replies is None:
            raise BrokerConnectionError("the Redis result backend is not connected")
        channel = key.encode()
        pushed = replies.begin_wait(channel)
        if pushed is not None and pushed.done() and not pushed.cancelled():
            return decode_record(pushed.result())  # pushed before the wait: no read
        try:
            async with asyncio.timeout(timeout):
                if pushed is None:
                    raw = await self._fetch(key)
                    if raw is not None and raw[:1] == b"1":
                        return decode_record(raw[1:])
                data = await sub.wait(channel, lambda: self._fetch(key), pushed)
        except TimeoutError:
            raise ResultTimeout(
                f"task {task_id} not ready after {timeout}s; is a worker consuming its queue?"
            ) from None
        return decode_record(data)

    async def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            async with self._guard():
                await self._client().unlink(*(self._key(t) for t in task_ids))

    async def open_group(self, group_id: str, size: int, body: bytes | None, ttl: float) -> None:
        meta, _ = self._group_keys(group_id)
        args: list[bytes | int] = [size, _ms(ttl)] + ([body] if body is not None else [])
        async with self._guard():
            await self._script(1)(keys=[meta], args=args)

    async def add_to_group(self, group_id: str, index: int, result: EncodedResult) -> GroupProgress:
        return (await self.add_to_groups([MemberReport(group_id, index, result)]))[0]

    async def add_to_groups(self, reports: Sequence[MemberReport]) -> list[GroupProgress]:
        """Every report of a batch in one script call (one round trip, atomic)."""
        if not reports:
            return []
        keys: list[str] = []
        args: list[bytes | int] = []
        for r in reports:
            state = r.result.state
            kind = b"s" if state == SUCCESS else b"f" if state == FAILURE else b"o"
            keys += self._group_keys(r.group_id)
            args += (r.index, kind + r.result.data)
        replies: list[Any] = [None] * len(reports)
        async with self._guard():
            slots = self._slots(keys[::2])
            parts = await asyncio.gather(
                *(
                    self._script(2)(
                        keys=[key for i in idx for key in keys[2 * i : 2 * i + 2]],
                        args=[a for i in idx for a in args[2 * i : 2 * i + 2]],
                    )
                    for idx in slots
                )
            )
            for idx, part in zip(slots, parts, strict=True):
                for i, reply in zip(idx, part, strict=True):
                    replies[i] = reply
        return [_progress(reply) for reply in replies]

    async def groups_sent(self, group_ids: Sequence[str]) -> None:
        keys = [self._group_keys(g)[0] for g in group_ids]
        async with self._guard():
            slots = self._slots(keys) if keys else []
            await asyncio.gather(*(self._script(3)(keys=[keys[i] for i in idx]) for idx in slots))

    async def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        """A key per id (for `revoked`), and the id in one sorted set scored by its expiry
        (for `revocations`); the set's own TTL follows its newest member."""
        pipe = self._client().pipeline(transaction=False)
        index = f"{self._prefix}:revocations"
        expires_ms = int((time.time() + ttl) * 1000)
        for task_id in task_ids:
            pipe.set(f"{self._prefix}:revoked:{task_id}", b"1", px=_ms(ttl))
        if task_ids:
            pipe.zadd(index, dict.fromkeys(task_ids, expires_ms))
            pipe.pexpire(index, _ms(ttl), gt=True)
            pipe.pexpire(index, _ms(ttl), nx=True)
        async with self._guard():
            await pipe.execute()

    async def revocations(self) -> frozenset[str]:
        index = f"{self._prefix}:revocations"
        pipe = self._client().pipeline(transaction=False)
        pipe.zremrangebyscore(index, "-inf", int(time.time() * 1000))
        pipe.zrange(index, 0, -1)
        async with self._guard():
            _, members = await pipe.execute()
        return frozenset(_bytes(m).decode() for m in members)

    async def broadcast(self, payload: bytes) -> None:
        async with self._guard():
            await self._client().publish(f"{self._prefix}:control", payload)

    async def control(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """Control payloads from PUBLISH on `{prefix}:control`; resubscribes after a drop."""
        channel = f"{self._prefix}:control"
        backoff = Backoff(first=0.5)
        while True:
            pubsub = self._client().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                if subscribed is not None:
                    subscribed()
                backoff.reset()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        yield _bytes(message["data"])
            except (RedisError, OSError) as exc:
                if not backoff.failing:
                    logger.warning("control channel lost (%s); resubscribing", exc)
                await backoff.sleep()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def register_worker(self, name: str, record: bytes, ttl: float) -> None:
        """One round trip: the record's own key (with its ttl) and the name in an index
        scored by expiry, as for revocations; the index's TTL follows its newest member."""
        index = f"{self._prefix}:workers"
        pipe = self._client().pipeline(transaction=False)
        pipe.set(f"{index}:{name}", record, px=_ms(ttl))
        pipe.zadd(index, {name: int((time.time() + ttl) * 1000)})
        pipe.pexpire(index, _ms(ttl), gt=True)
        pipe.pexpire(index, _ms(ttl), nx=True)
        async with self._guard():
            await pipe.execute()

    async def unregister_worker(self, name: str) -> None:
        index = f"{self._prefix}:workers"
        pipe = self._client().pipeline(transaction=False)
        pipe.execute_command("UNLINK", f"{index}:{name}")  # a cluster pipeline's unlink is async
        pipe.zrem(index, name)
        async with self._guard():
            await pipe.execute()

    async def workers(self) -> dict[str, bytes]:
        index = f"{self._prefix}:workers"
        pipe = self._client().pipeline(transaction=False)
        pipe.zremrangebyscore(index, "-inf", int(time.time() * 1000))
        pipe.zrange(index, 0, -1)
        async with self._guard():
            _, members = await pipe.execute()
        names = sorted(_bytes(m).decode() for m in members)
        if not names:
            return {}
        records = await self._fetch_many([f"{index}:{n}" for n in names])
        return {n: r for n, r in zip(names, records, strict=True) if r is not None}

    async def reply(self, reply_to: str, payload: bytes, ttl: float) -> None:
        key = f"{self._prefix}:reply:{reply_to}"
        pipe = self._client().pipeline(transaction=False)
        pipe.rpush(key, payload)
        pipe.pexpire(key, _ms(ttl))
        async with self._guard():
            await pipe.execute()

    async def replies(self, reply_to: str, wait: float) -> list[bytes]:
        """BLPOP for the first reply (the server wakes us, no polling), then LPOP the rest."""
        key = f"{self._prefix}:reply:{reply_to}"
        client = self._client()
        with self._map_errors():
            # BLPOP's timeout 0 means forever: never pass less than 1 ms
            first: Any = await client.blpop([key], timeout=max(wait, 0.001))
            if first is None:
                return []
            rest: Any = await client.lpop(key, 1000)
        return [_bytes(first[1]), *(_bytes(r) for r in rest or [])]

    # The history and schedule stores load when the dashboard or a beat asks for them, not with
    # every worker (docs/benchmarks.md: the idle worker's memory)
    def history_store(self, app_name: str) -> RedisHistoryStore:
        from aiotask.backends._history_redis import RedisHistoryStore

        return RedisHistoryStore(self._client, self._prefix, app_name)

    def schedule_store(self, app_name: str) -> RedisScheduleStore:
        from aiotask.backends._schedule_redis import RedisScheduleStore

        return RedisScheduleStore(self._client, self._prefix, app_name)

    def lock_store(self) -> RedisLockStore:
        from aiotask.backends._lock_redis import RedisLockStore

        return RedisLockStore(self._client, self._prefix)

    def coordination_store(self, app_name: str) -> RedisCoordinationStore:
        from aiotask.backends._coord_redis import RedisCoordinationStore

        return RedisCoordinationStore(self._client, self._prefix, app_name)


def _progress(reply: list[Any]) -> GroupProgress:
    """One ADD_TO_GROUPS reply -> GroupProgress (1: first decision, 2: again, unsent)."""
    size, done, fire, failure = (int(x) for x in reply[:4])
    body = _bytes(reply[4]) if len(reply) > 4 and reply[4] is not None else None
    records = [decode_record(_bytes(v)[1:]) for v in reply[5]] if fire else []
    return GroupProgress(
        size,
        done,
        fire=fire == 1,
        first_failure=failure == 1,
        body=body,
        records=records,
        fire_again=fire == 2,
        failure_again=failure == 2,
    )
