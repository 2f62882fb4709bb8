"""Unique/debounce locks in process memory (tests, demos): a dict of (owner, deadline)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class MemoryLockStore:
    """LockStore in one process; atomic because nothing here awaits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, float]] = {}

    def _holder(self, name: str) -> str | None:
        found = self._locks.get(name)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._locks[name]
            return None
        return found[0]

    async def acquire(self, name: str, owner: str, ttl: float) -> str | None:
        held = self._holder(name)
        if held is None:
            self._locks[name] = (owner, time.monotonic() + ttl)
        return held

    async def swap(self, name: str, expect: str, owner: str, ttl: float) -> bool:
        if self._holder(name) != expect:
            return False
        self._locks[name] = (owner, time.monotonic() + ttl)
        return True

    async def put(self, name: str, owner: str, ttl: float) -> None:
        self._locks[name] = (owner, time.monotonic() + ttl)

    async def get(self, name: str) -> str | None:
        return self._holder(name)

    async def release(self, locks: Sequence[tuple[str, str]]) -> None:
        for name, owner in locks:
            if self._holder(name) == owner:
                del self._locks[name]
