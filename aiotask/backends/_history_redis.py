"""Task history in Redis: hashes and sorted sets under one hash tag, written and pruned in Lua.

Keys (one slot, so it works on a Redis Cluster too) start `<prefix>:{hist:<app>}:`:
`rec` (id -> record JSON), `state` (id -> state), `roots` / `groups` (id -> root / group id),
`all` (sorted set of ids by last change), `st:<state>` (the same, per state), `states` (the
state names seen), `root:<id>` (the ids of one workflow or group) and `rootset` (the ids that
have such a set).

Listing by state and time range reads the sorted sets only. A search by text, name or worker
has no index here: it reads the candidates newest first, SCAN_CHUNK at a time, and filters
them in Python (one pass over the history; see docs/dashboard.md for the cost).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from aiotask.history import Bucket, HistoryRecord, matches, prefilter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from aiotask._redis.client import Client
    from aiotask.history import HistoryQuery

#: Records read per round trip by a search that filters in Python.
SCAN_CHUNK = 1_000
#: Records written per script call (each call blocks the server while it runs).
PUT_CHUNK = 500

#: ARGV: (id, state, updated_at, root id or "", group id or "", JSON) per record.
PUT = """
local base = KEYS[1]
local i = 1
while i <= #ARGV do
  local id, st, at, root, group, blob = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4],
                                        ARGV[i+5]
  i = i + 6
  local old = redis.call('HGET', base .. 'state', id)
  if old and old ~= st then redis.call('ZREM', base .. 'st:' .. old, id) end
  redis.call('HSET', base .. 'state', id, st)
  redis.call('HSET', base .. 'rec', id, blob)
  redis.call('ZADD', base .. 'all', at, id)
  redis.call('ZADD', base .. 'st:' .. st, at, id)
  redis.call('SADD', base .. 'states', st)
  if root ~= '' then
    redis.call('HSET', base .. 'roots', id, root)
    redis.call('SADD', base .. 'root:' .. root, id)
    redis.call('SADD', base .. 'rootset', root)
  end
  if group ~= '' then
    redis.call('HSET', base .. 'groups', id, group)
    redis.call('SADD', base .. 'root:' .. group, id)
    redis.call('SADD', base .. 'rootset', group)
  end
end
return 1
"""

#: ARGV: (state, cutoff, batch) per state; returns how many records went.
PRUNE = """
local base = KEYS[1]
local gone = 0
local i = 1
while i <= #ARGV do
  local st, cutoff, batch = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2])
  i = i + 3
  local ids = redis.call('ZRANGEBYSCORE', base .. 'st:' .. st, '-inf', '(' .. cutoff,
                         'LIMIT', 0, batch)
  for _, id in ipairs(ids) do
    local root = redis.call('HGET', base .. 'roots', id)
    if root then
      redis.call('SREM', base .. 'root:' .. root, id)
      redis.call('HDEL', base .. 'roots', id)
    end
    local group = redis.call('HGET', base .. 'groups', id)
    if group then
      redis.call('SREM', base .. 'root:' .. group, id)
      redis.call('HDEL', base .. 'groups', id)
    end
    redis.call('HDEL', base .. 'rec', id)
    redis.call('HDEL', base .. 'state', id)
    redis.call('ZREM', base .. 'all', id)
    redis.call('ZREM', base .. 'st:' .. st, id)
  end
  gone = gone + #ids
end
return gone
"""


class RedisHistoryStore:
    """HistoryStore over the result backend's client (fetched per call, so a reconnected
    backend is followed)."""

    def __init__(self, client: Callable[[], Client], prefix: str, app_name: str) -> None:
        self._get = client
        self._base = f"{prefix}:{{hist:{app_name}}}:"
        self._put = client().register_script(PUT)
        self._prune = client().register_script(PRUNE)

    @property
    def _client(self) -> Client:
        return self._get()

    async def put(self, records: Sequence[HistoryRecord]) -> None:
        if not records:
            return
        for low in range(0, len(records), PUT_CHUNK):  # short scripts: Redis stays responsive
            await self._put_chunk(records[low : low + PUT_CHUNK])

    async def _put_chunk(self, records: Sequence[HistoryRecord]) -> None:
        argv: list[Any] = []
        for r in records:
            argv += [
                r.id,
                r.state,
                repr(r.updated_at),
                r.root_id or "",
                r.group_id or "",
                r.to_json(),
            ]
        await self._put(keys=[self._base], args=argv)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, HistoryRecord]:
        if not task_ids:
            return {}
        blobs = await self._client.hmget(self._base + "rec", list(task_ids))
        found = [HistoryRecord.from_json(b) for b in blobs if b is not None]
        return {r.id: r for r in found}

    async def search(self, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        zset = self._base + (f"st:{query.state}" if query.state else "all")
        low = "-inf" if query.since is None else repr(query.since)
        high = "+inf" if query.until is None else repr(query.until)
        needle = query.q.strip()
        if needle:
            exact = await self.get_many([needle])
            if needle in exact and matches(exact[needle], query):
                return ([exact[needle]] if query.offset == 0 and query.limit else []), 1
        if not (needle or query.name or query.worker):  # the sorted sets answer alone
            ids: list[Any] = await self._client.zrevrangebyscore(
                zset, high, low, start=query.offset, num=query.limit
            )
            total = await self._client.zcount(zset, low, high)
            found = await self.get_many([_text(i) for i in ids])
            return [found[_text(i)] for i in ids if _text(i) in found], int(total)
        return await self._scan(zset, low, high, query)

    async def _scan(
        self, zset: str, low: str, high: str, query: HistoryQuery
    ) -> tuple[list[HistoryRecord], int]:
        shown: list[HistoryRecord] = []
        total = start = 0
        likely = prefilter(query)
        while True:
            ids: list[Any] = await self._client.zrevrangebyscore(
                zset, high, low, start=start, num=SCAN_CHUNK
            )
            if not ids:
                return shown, total
            start += len(ids)
            blobs = await self._client.hmget(self._base + "rec", [_text(i) for i in ids])
            for blob in blobs:
                if blob is None or not likely(_bytes(blob)):
                    continue
                record = HistoryRecord.from_json(blob)
                if not matches(record, query):
                    continue
                if query.offset <= total < query.offset + query.limit:
                    shown.append(record)
                total += 1

    async def family(self, root_id: str, limit: int) -> list[HistoryRecord]:
        ids = [_text(i) for i in await self._client.smembers(self._base + f"root:{root_id}")]
        found = await self.get_many([root_id, *ids[:limit]])
        return sorted(found.values(), key=lambda r: r.seen_at)[:limit]

    async def counts(self) -> dict[str, int]:
        states = sorted(_text(s) for s in await self._client.smembers(self._base + "states"))
        pipe = self._client.pipeline(transaction=False)
        for state in states:
            pipe.zcard(self._base + f"st:{state}")
        sizes = await pipe.execute()
        return {s: int(n) for s, n in zip(states, sizes, strict=True) if n}

    async def finished(self, since: float, width: float) -> list[Bucket]:
        count = max(math.ceil((time.time() - since) / width), 1)
        pipe = self._client.pipeline(transaction=False)
        for i in range(count):
            low, high = repr(since + i * width), "(" + repr(since + (i + 1) * width)
            pipe.zcount(self._base + "st:SUCCESS", low, high)
            pipe.zcount(self._base + "st:FAILURE", low, high)
        sizes = await pipe.execute()
        return [
            Bucket(since + i * width, int(sizes[2 * i]), int(sizes[2 * i + 1]))
            for i in range(count)
        ]

    async def prune(self, retention: Mapping[str, float], now: float, batch: int) -> int:
        if not retention:
            return 0
        argv: list[Any] = []
        for state, keep in retention.items():
            argv += [state, repr(now - keep), batch]
        return int(await self._prune(keys=[self._base], args=argv))

    async def clear(self) -> None:
        client = self._client
        states = [_text(s) for s in await client.smembers(self._base + "states")]
        roots = [_text(s) for s in await client.smembers(self._base + "rootset")]
        keys = [
            self._base + k for k in ("rec", "state", "roots", "groups", "all", "states", "rootset")
        ]
        keys += [self._base + f"st:{s}" for s in states]
        keys += [self._base + f"root:{r}" for r in roots]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
