"""Unique/debounce locks on Client: one string key per lock (`<prefix>:lock:<name>`),
holding the owner's task id, with a PX lifetime. Each operation is one short Lua script, so
it is atomic; a batch of releases is one pipeline of single-key scripts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiotask._redis.client import Client

#: Take the lock if free; else answer the holder (nil: taken by us).
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""
#: Hand the lock from ARGV[1] to ARGV[2]; 1 if done.
SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
#: Delete the lock only while ARGV[1] holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLockStore:
    """LockStore over the result backend's client (fetched per call: a reconnect is followed)."""

    def __init__(self, client: Callable[[], Client], prefix: str) -> None:
        self._get = client
        self._base = f"{prefix}:lock:"

    def _key(self, name: str) -> str:
        return self._base + name

    async def acquire(self, name: str, owner: str, ttl: float) -> str | None:
        held: Any = await self._get().eval(ACQUIRE, 1, self._key(name), owner, _ms(ttl))
        return _text(held)

    async def swap(self, name: str, expect: str, owner: str, ttl: float) -> bool:
        done: Any = await self._get().eval(SWAP, 1, self._key(name), expect, owner, _ms(ttl))
        return bool(done)

    async def put(self, name: str, owner: str, ttl: float) -> None:
        await self._get().set(self._key(name), owner, px=_ms(ttl))

    async def get(self, name: str) -> str | None:
        value: Any = await self._get().get(self._key(name))
        return _text(value)

    async def release(self, locks: Sequence[tuple[str, str]]) -> None:
        if not locks:
            return
        async with self._get().pipeline(transaction=False) as pipe:
            for name, owner in locks:
                pipe.eval(RELEASE, 1, self._key(name), owner)
            await pipe.execute()
