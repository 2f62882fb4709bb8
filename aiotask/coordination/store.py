"""The coordination store protocol (one per result backend) and its in-process implementation.

Each backend answers `coordination_store(app_name)`: Redis (Lua scripts on the server's clock),
SQLite (one IMMEDIATE transaction per call) and memory (below). With RabbitMQ as the broker the
result backend's store is used, so coordination needs a result backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from aiotask._time import monotonic
from aiotask.coordination.concurrency import SlotTable
from aiotask.coordination.ratelimit import RESERVE_AHEAD, Grant, gcra

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiotask.coordination.concurrency import Slot


class CoordinationStore(Protocol):
    """Shared budgets: GCRA state per rate key, leased slots per concurrency key."""

    async def take_rate(
        self, key: str, interval: float, burst: int = 1, ahead: float = RESERVE_AHEAD
    ) -> Grant:
        """One GCRA request (see coordination/ratelimit.py), atomically."""
        ...

    async def acquire_slot(self, key: str, limit: int, token: str, lease: float) -> bool:
        """Take one of `limit` slots of `key` for `token`, leased for `lease` seconds."""
        ...

    async def renew_slots(self, slots: Sequence[Slot], lease: float) -> list[bool]:
        """Extend the leases of held slots; False for one that lapsed meanwhile."""
        ...

    async def release_slots(self, slots: Sequence[Slot]) -> None:
        """Free slots at once (the task ended); unknown or lapsed ones are ignored."""
        ...

    async def slots_in_use(self, key: str) -> int:
        """Live leases of `key` (inspection and tests)."""
        ...


#: Keys the memory store keeps before it forgets the idle ones.
PRUNE_AFTER = 10_000


class MemoryCoordinationStore:
    """The store of memory:// backends: one process, shared by the workers on its loop."""

    def __init__(self, clock: Callable[[], float] = monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._slots = SlotTable()

    async def take_rate(
        self, key: str, interval: float, burst: int = 1, ahead: float = RESERVE_AHEAD
    ) -> Grant:
        now = self._clock()
        tat, grant = gcra(self._tats.get(key), now, interval, burst, ahead)
        if tat is not None:
            self._tats[key] = tat
            if len(self._tats) > PRUNE_AFTER:  # a TAT in the past carries no debt: forget it
                self._tats = {k: t for k, t in self._tats.items() if t > now}
        return grant

    async def acquire_slot(self, key: str, limit: int, token: str, lease: float) -> bool:
        return self._slots.acquire(key, limit, token, lease, self._clock())

    async def renew_slots(self, slots: Sequence[Slot], lease: float) -> list[bool]:
        return self._slots.renew(slots, lease, self._clock())

    async def release_slots(self, slots: Sequence[Slot]) -> None:
        self._slots.release(slots)

    async def slots_in_use(self, key: str) -> int:
        return self._slots.count(key, self._clock())
