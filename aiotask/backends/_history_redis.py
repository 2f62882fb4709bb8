"""Task history in Redis: hashes and sorted sets under one hash tag, written and pruned in Lua.

Keys (one slot, so it works on a Redis Cluster too) start `<prefix>:{hist:<app>}:`:
`rec` (id -> record JSON), `state` (id -> state), `roots` / `groups` (id -> root / group id),
`all` (sorted set of ids by last change), `st:<state>` (the same, per state), `states` (the
state names seen), `wk:<worker>` (the same, per worker), `workers` (the worker names seen),
`wkr` / `nms` (id -> worker / task name), `txt` (id -> the lowercased name and text a search
by content looks in, NUL between), `root:<id>` (the ids of one workflow or group) and
`rootset` (the ids that have such a set).

Listing by state, worker and time range reads the sorted sets only. A search by text or name
(or by state and worker at once) filters server-side: a script walks the candidates newest
first, SCAN_CHUNK ids per call (so Redis stays responsive), and checks the small `txt` / `nms`
/ `wkr` / `state` hashes, never decoding a record; only the page's records are read. A history
written before those hashes existed (`txt` smaller than `rec`) is searched the old way: every
candidate read and filtered in Python, until retention has pruned the old rows.
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

#: Candidates a search script checks per call (server-side; a few ms of Redis time each).
SCAN_CHUNK = 5_000
#: Ids per HMGET inside that script (Lua's unpack has a stack limit).
SCAN_STEP = 1_000
#: Records read per round trip by the old search, which filters in Python.
PY_CHUNK = 1_000
#: Records written per script call (each call blocks the server while it runs).
PUT_CHUNK = 500

#: ARGV: (id, state, updated_at, root id or "", group id or "", JSON, worker, name, search
#: text) per record.
PUT = """
local base = KEYS[1]
local i = 1
while i <= #ARGV do
  local id, st, at, root, group, blob = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4],
                                        ARGV[i+5]
  local wk, name, text = ARGV[i+6], ARGV[i+7], ARGV[i+8]
  i = i + 9
  local old = redis.call('HGET', base .. 'state', id)
  if old and old ~= st then redis.call('ZREM', base .. 'st:' .. old, id) end
  local oldwk = redis.call('HGET', base .. 'wkr', id)
  if oldwk and oldwk ~= wk and oldwk ~= '' then
    redis.call('ZREM', base .. 'wk:' .. oldwk, id)
    if redis.call('EXISTS', base .. 'wk:' .. oldwk) == 0 then
      redis.call('SREM', base .. 'workers', oldwk)
    end
  end
  redis.call('HSET', base .. 'wkr', id, wk)
  if wk ~= '' then
    redis.call('ZADD', base .. 'wk:' .. wk, at, id)
    redis.call('SADD', base .. 'workers', wk)
  end
  redis.call('HSET', base .. 'nms', id, name)
  redis.call('HSET', base .. 'txt', id, text)
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

#: A Lua function dropping record `id` (of state `st`) and its index entries. An index set
#: left empty also leaves the set of names that lists it (no entry outlives its records).
DROP = """
local base = KEYS[1]
local function forget(remove, index, id, names, name)
  redis.call(remove, index, id)
  if redis.call('EXISTS', index) == 0 then redis.call('SREM', base .. names, name) end
end
local function drop(id, st)
  local root = redis.call('HGET', base .. 'roots', id)
  if root then
    forget('SREM', base .. 'root:' .. root, id, 'rootset', root)
    redis.call('HDEL', base .. 'roots', id)
  end
  local group = redis.call('HGET', base .. 'groups', id)
  if group then
    forget('SREM', base .. 'root:' .. group, id, 'rootset', group)
    redis.call('HDEL', base .. 'groups', id)
  end
  local wk = redis.call('HGET', base .. 'wkr', id)
  if wk and wk ~= '' then forget('ZREM', base .. 'wk:' .. wk, id, 'workers', wk) end
  redis.call('HDEL', base .. 'wkr', id)
  redis.call('HDEL', base .. 'nms', id)
  redis.call('HDEL', base .. 'txt', id)
  redis.call('HDEL', base .. 'rec', id)
  redis.call('HDEL', base .. 'state', id)
  redis.call('ZREM', base .. 'all', id)
  forget('ZREM', base .. 'st:' .. st, id, 'states', st)
end
"""

#: ARGV: (state, cutoff, batch) per state; returns how many records went.
PRUNE = (
    DROP
    + """
local gone = 0
local i = 1
while i <= #ARGV do
  local st, cutoff, batch = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2])
  i = i + 3
  local ids = redis.call('ZRANGEBYSCORE', base .. 'st:' .. st, '-inf', '(' .. cutoff,
                         'LIMIT', 0, batch)
  for _, id in ipairs(ids) do drop(id, st) end
  gone = gone + #ids
end
return gone
"""
)

#: ARGV: task ids; returns how many records went.
DELETE = (
    DROP
    + """
local gone = 0
for _, id in ipairs(ARGV) do
  local st = redis.call('HGET', base .. 'state', id)
  if st then
    drop(id, st)
    gone = gone + 1
  end
end
return gone
"""
)

#: KEYS: base, candidate sorted set. ARGV: high, low, start, count, offset, limit, matched so
#: far, id prefix, lowercased needle, state, worker, name ("" = no such condition). Checks up
#: to `count` candidates from rank `start` of the score range, newest first; returns
#: {candidates read, matches, ids of the matches that fall on the page}.
SCAN = f"""
local base, zset = KEYS[1], KEYS[2]
local high, low = ARGV[1], ARGV[2]
local start, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local offset, limit, total = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local prefix, needle, st, wk, name = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
-- the score range as ranks (newest = 0): a walk by rank skips the ids before `start` in
-- O(log n), where a LIMIT offset would step over each of them
local first, last = 0, redis.call('ZCARD', zset) - 1
if high ~= '+inf' then first = redis.call('ZCOUNT', zset, '(' .. high, '+inf') end
if low ~= '-inf' then last = redis.call('ZCOUNT', zset, low, '+inf') - 1 end
local read, matched, page = 0, 0, {{}}
while read < count do
  local a = first + start + read
  local b = math.min(a + {SCAN_STEP} - 1, last, first + start + count - 1)
  if a > b then break end
  local ids = redis.call('ZREVRANGE', zset, a, b)
  if #ids == 0 then break end
  read = read + #ids
  local sts, wks, nms, txts
  if st ~= '' then sts = redis.call('HMGET', base .. 'state', unpack(ids)) end
  if wk ~= '' then wks = redis.call('HMGET', base .. 'wkr', unpack(ids)) end
  if name ~= '' then nms = redis.call('HMGET', base .. 'nms', unpack(ids)) end
  if needle ~= '' then txts = redis.call('HMGET', base .. 'txt', unpack(ids)) end
  for j, id in ipairs(ids) do
    local ok = (not sts or sts[j] == st) and (not wks or wks[j] == wk)
               and (name == '' or nms[j] == name)
    if ok and needle ~= '' then
      ok = string.find(id, prefix, 1, true) == 1
           or (txts[j] and string.find(txts[j], needle, 1, true) ~= nil)
    end
    if ok then
      local n = total + matched
      if n >= offset and n < offset + limit then page[#page + 1] = id end
      matched = matched + 1
    end
  end
end
return {{read, matched, page}}
"""


class RedisHistoryStore:
    """HistoryStore over the result backend's client (fetched per call, so a reconnected
    backend is followed)."""

    def __init__(self, client: Callable[[], Client], prefix: str, app_name: str) -> None:
        self._get = client
        self._base = f"{prefix}:{{hist:{app_name}}}:"
        self._put = client().register_script(PUT)
        self._prune = client().register_script(PRUNE)
        self._delete = client().register_script(DELETE)
        self._scan_script = client().register_script(SCAN)

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
                r.worker,
                r.name,
                r.name.lower() + "\0" + r.text(),
            ]
        await self._put(keys=[self._base], args=argv)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, HistoryRecord]:
        if not task_ids:
            return {}
        blobs = await self._client.hmget(self._base + "rec", list(task_ids))
        found = [HistoryRecord.from_json(b) for b in blobs if b is not None]
        return {r.id: r for r in found}

    async def search(self, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        low = "-inf" if query.since is None else repr(query.since)
        high = "+inf" if query.until is None else repr(query.until)
        needle = query.q.strip()
        if needle:
            exact = await self.get_many([needle])
            if needle in exact and matches(exact[needle], query):
                return ([exact[needle]] if query.offset == 0 and query.limit else []), 1
        if (needle or query.name or query.worker) and (
            "\0" in needle or not await self._indexed()
        ):  # rows of an older writer lack the worker index and search text
            zset = self._base + (f"st:{query.state}" if query.state else "all")
            return await self._scan_in_python(zset, low, high, query)
        # the sorted set to walk, and the state / worker each of its ids must still have
        state, worker = query.state, query.worker
        if state and worker:  # walk the smaller index, check the other condition per id
            pipe = self._client.pipeline(transaction=False)
            pipe.zcard(self._base + f"st:{state}")
            pipe.zcard(self._base + f"wk:{worker}")
            by_state, by_worker = await pipe.execute()
            if int(by_state) <= int(by_worker):
                zset, state = self._base + f"st:{state}", ""
            else:
                zset, worker = self._base + f"wk:{worker}", ""
        elif worker:
            zset, worker = self._base + f"wk:{worker}", ""
        else:
            zset, state = self._base + (f"st:{state}" if state else "all"), ""
        if not (needle or query.name or state or worker):  # the sorted sets answer alone
            ids: list[Any] = await self._client.zrevrangebyscore(
                zset, high, low, start=query.offset, num=query.limit
            )
            total = await self._client.zcount(zset, low, high)
            found = await self.get_many([_text(i) for i in ids])
            return [found[_text(i)] for i in ids if _text(i) in found], int(total)
        return await self._scan(zset, low, high, query, needle, state, worker)

    async def _indexed(self) -> bool:
        """Whether every record has its search text (not so for rows of an older writer)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hlen(self._base + "txt")
        pipe.hlen(self._base + "rec")
        texts, records = await pipe.execute()
        return int(texts) >= int(records)

    async def _scan(
        self,
        zset: str,
        low: str,
        high: str,
        query: HistoryQuery,
        needle: str,
        state: str,
        worker: str,
    ) -> tuple[list[HistoryRecord], int]:
        page: list[str] = []
        total = start = 0
        while True:
            args: list[Any] = [high, low, start, SCAN_CHUNK, query.offset, query.limit, total]
            args += [needle, needle.lower(), state, worker, query.name]
            read, matched, ids = await self._scan_script(keys=[self._base, zset], args=args)
            page += [_text(i) for i in ids]
            total += int(matched)
            start += int(read)
            if int(read) < SCAN_CHUNK:
                break
        found = await self.get_many(page)
        return [found[i] for i in page if i in found], total

    async def _scan_in_python(
        self, zset: str, low: str, high: str, query: HistoryQuery
    ) -> tuple[list[HistoryRecord], int]:
        shown: list[HistoryRecord] = []
        total = start = 0
        likely = prefilter(query)
        while True:
            ids: list[Any] = await self._client.zrevrangebyscore(
                zset, high, low, start=start, num=PY_CHUNK
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

    async def delete(self, task_ids: Sequence[str]) -> int:
        gone = 0
        for low in range(0, len(task_ids), PUT_CHUNK):  # short scripts
            chunk = list(task_ids[low : low + PUT_CHUNK])
            gone += int(await self._delete(keys=[self._base], args=chunk))
        return gone

    async def clear(self) -> None:
        client = self._client
        states = [_text(s) for s in await client.smembers(self._base + "states")]
        roots = [_text(s) for s in await client.smembers(self._base + "rootset")]
        workers = [_text(s) for s in await client.smembers(self._base + "workers")]
        names = ("rec", "state", "roots", "groups", "all", "states", "rootset")
        keys = [self._base + k for k in (*names, "workers", "wkr", "nms", "txt", "cursor")]
        keys += [self._base + f"st:{s}" for s in states]
        keys += [self._base + f"wk:{w}" for w in workers]
        keys += [self._base + f"root:{r}" for r in roots]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])

    async def get_cursor(self) -> str | None:
        found = await self._client.get(self._base + "cursor")
        return None if found is None else _text(found)

    async def put_cursor(self, cursor: str) -> None:
        await self._client.set(self._base + "cursor", cursor)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
