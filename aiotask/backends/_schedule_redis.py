"""The beat store on Client: five hashes under one hash tag, claims and confirms in Lua.

Keys (one slot, so it works on Client Cluster too): `<prefix>:{beat:<app>}:` followed by
`entries` (name -> JSON), `paused` (name -> 1), `marks` (name -> watermark ms), `states`
(name -> JSON) and `skips` (name NUL reason -> count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiotask.beat.store import StoredState

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiotask._redis.client import Client
    from aiotask.beat.store import Claim

#: Compare-and-set each claim; returns 1/0 per claim. Modes: n(ormal) i(nit) e(xpect); a
#: normal claim wins only from the watermark it was planned from (`since`, '' for none).
CLAIM = """
local out = {}
local i = 1
while i <= #ARGV do
  local name, through, state, mode, expect, since =
    ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  i = i + 6
  local mark = redis.call('HGET', KEYS[1], name)
  local ok = 0
  if mode == 'e' then
    if redis.call('HGET', KEYS[2], name) == expect then ok = 1 end
  elseif mode == 'i' then
    if not mark then ok = 1 end
  elseif since == '' then
    if not mark then ok = 1 end
  elseif mark and tonumber(mark) == tonumber(since) then
    ok = 1
  end
  if ok == 1 then
    if mode ~= 'e' then redis.call('HSET', KEYS[1], name, through) end
    redis.call('HSET', KEYS[2], name, state)
  end
  out[#out + 1] = ok
end
return out
"""

#: Confirms (state replaced only while the watermark is unchanged), then skip counts.
SETTLE = """
local n = tonumber(ARGV[1])
local i = 2
for _ = 1, n do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i+1] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+2])
  end
  i = i + 3
end
while i <= #ARGV do
  redis.call('HINCRBY', KEYS[3], ARGV[i] .. '\\0' .. ARGV[i+1], ARGV[i+2])
  i = i + 3
end
return 1
"""


class RedisScheduleStore:
    """ScheduleStore over the result backend's redis-py client (fetched per call, so a
    reconnected backend is followed)."""

    def __init__(self, client: Callable[[], Client], prefix: str, app_name: str) -> None:
        self._get = client
        tag = f"{prefix}:{{beat:{app_name}}}"
        self._entries, self._paused = f"{tag}:entries", f"{tag}:paused"
        self._marks, self._states, self._skips = f"{tag}:marks", f"{tag}:states", f"{tag}:skips"
        self._claim = client().register_script(CLAIM)
        self._settle = client().register_script(SETTLE)

    @property
    def _client(self) -> Client:
        return self._get()

    @property
    def keys(self) -> list[str]:
        """Every key this store writes (tests clean them up)."""
        return [self._entries, self._paused, self._marks, self._states, self._skips]

    async def entries(self) -> dict[str, bytes]:
        raw = await self._client.hgetall(self._entries)
        return {_text(k): _bytes(v) for k, v in raw.items()}

    async def put_entry(self, name: str, blob: bytes) -> None:
        await self._client.hset(self._entries, name, blob)

    async def remove_entry(self, name: str) -> bool:
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._entries, name)
        pipe.hdel(self._paused, name)
        pipe.hdel(self._marks, name)
        pipe.hdel(self._states, name)
        removed, *_ = await pipe.execute()
        counts = await self.skip_counts([name])
        fields = [f"{name}\0{reason}" for reason in counts.get(name, {})]
        if fields:
            await self._client.hdel(self._skips, *fields)
        return bool(removed)

    async def paused(self) -> set[str]:
        return {_text(k) for k in await self._client.hkeys(self._paused)}

    async def set_paused(self, name: str, paused: bool) -> None:
        if paused:
            await self._client.hset(self._paused, name, 1)
        else:
            await self._client.hdel(self._paused, name)

    async def states(self, names: Sequence[str]) -> dict[str, StoredState]:
        if not names:
            return {}
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._marks, list(names))
        pipe.hmget(self._states, list(names))
        marks, states = await pipe.execute()
        return {
            name: StoredState(int(mark), bytes(state) if state is not None else None)
            for name, mark, state in zip(names, marks, states, strict=True)
            if mark is not None
        }

    async def skip_counts(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        wanted = set(names)
        out: dict[str, dict[str, int]] = {}
        async for key, value in self._client.hscan_iter(self._skips, count=1000):
            name, _, reason = _text(key).partition("\0")
            if name in wanted:
                out.setdefault(name, {})[reason] = int(value)
        return out

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        args: list[Any] = []
        for c in claims:
            mode = "e" if c.expect is not None else "i" if c.init else "n"
            since = "" if c.since_ms is None else str(c.since_ms)
            args += [c.name, str(c.through_ms), c.state, mode, c.expect or b"", since]
        won = await self._claim(keys=[self._marks, self._states], args=args, client=self._client)
        return [bool(w) for w in won]

    async def settle(
        self, confirms: Sequence[tuple[str, int, bytes]], skips: Sequence[tuple[str, str, int]]
    ) -> None:
        args: list[Any] = [len(confirms)]
        for name, through, state in confirms:
            args += [name, str(through), state]
        for name, reason, n in skips:
            args += [name, reason, n]
        await self._settle(
            keys=[self._marks, self._states, self._skips], args=args, client=self._client
        )


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
