"""The coordination store on Client: GCRA and slot leases in Lua, on the server's clock.

Every script reads `TIME` on the server, so workers with skewed clocks still share one
timeline. Keys: `<prefix>:coord:<app>:rate:<key>` (a string: the TAT in ms, expiring once it
is in the past) and `<prefix>:coord:<app>:slots:<key>` (a ZSET token -> lease expiry in ms).
Each script touches one key, so it also runs on Client Cluster.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiotask._redis.cluster import is_cluster
from aiotask.coordination.ratelimit import RESERVE_AHEAD, Grant

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiotask._redis.client import Client
    from aiotask.coordination.concurrency import Slot

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""

#: ARGV: interval ms, burst, ahead ms -> {granted 0/1, wait ms as a string}
TAKE_RATE = (
    _NOW
    + """
local interval, burst, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - (burst - 1) * interval - now
if wait < 0 then wait = 0 end
if wait > ahead then return {0, string.format('%.3f', wait - ahead)} end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
return {1, string.format('%.3f', wait)}
"""
)

#: ARGV: token, limit, lease ms -> 1 (held) / 0 (full)
ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease) + 1000)
  return 1
end
return 0
"""
)

#: ARGV: token, lease ms -> 1 (renewed) / 0 (lapsed: the slot may be someone else's now)
RENEW = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(lease) + 1000)
return 1
"""
)

#: -> live leases of the key
COUNT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)


class RedisCoordinationStore:
    """CoordinationStore over the result backend's redis-py client (fetched per call, so a
    reconnected backend is followed)."""

    def __init__(self, client: Callable[[], Client], prefix: str, app_name: str) -> None:
        self._get = client
        self._base = f"{prefix}:coord:{app_name}"
        redis = client()
        self._take = redis.register_script(TAKE_RATE)
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._count = redis.register_script(COUNT)

    def _rate_key(self, key: str) -> str:
        return f"{self._base}:rate:{key}"

    def _slots_key(self, key: str) -> str:
        return f"{self._base}:slots:{key}"

    async def take_rate(
        self, key: str, interval: float, burst: int = 1, ahead: float = RESERVE_AHEAD
    ) -> Grant:
        args = [interval * 1000.0, burst, ahead * 1000.0]
        reply: Any = await self._take(keys=[self._rate_key(key)], args=args, client=self._get())
        return Grant(int(reply[0]) == 1, float(reply[1]) / 1000.0)

    async def acquire_slot(self, key: str, limit: int, token: str, lease: float) -> bool:
        args: list[str | float] = [token, limit, lease * 1000.0]
        reply: Any = await self._acquire(keys=[self._slots_key(key)], args=args, client=self._get())
        return int(reply) == 1

    async def renew_slots(self, slots: Sequence[Slot], lease: float) -> list[bool]:
        if not slots:
            return []
        client = self._get()
        if is_cluster(client):  # a cluster pipeline refuses scripts: one call per key, at once
            replies = await asyncio.gather(
                *(
                    self._renew(keys=[self._slots_key(k)], args=[t, lease * 1000.0], client=client)
                    for k, t in slots
                )
            )
            return [int(r) == 1 for r in replies]
        pipe = client.pipeline(transaction=False)
        for key, token in slots:
            await self._renew(
                keys=[self._slots_key(key)],
                args=[token, lease * 1000.0],
                client=pipe,  # type: ignore[arg-type]
            )
        return [int(r) == 1 for r in await pipe.execute()]

    async def release_slots(self, slots: Sequence[Slot]) -> None:
        if not slots:
            return
        pipe = self._get().pipeline(transaction=False)
        for key, token in slots:
            pipe.zrem(self._slots_key(key), token)
        await pipe.execute()

    async def slots_in_use(self, key: str) -> int:
        reply: Any = await self._count(keys=[self._slots_key(key)], client=self._get())
        return int(reply)
