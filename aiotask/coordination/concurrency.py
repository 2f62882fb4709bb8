"""Concurrency slots as leases: at most `limit` live leases per key, each with an owner token
and an expiry that the owner's worker keeps renewing.

A slot is never "held until released" without a deadline: a worker killed with -9 stops
renewing, its leases lapse after `lease` seconds and the slots are free again. `SlotTable` is
the reference semantics on an injectable clock (the memory store uses it; Redis and SQLite do
the same in one script / one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

#: A held slot: (key, owner token).
Slot = tuple[str, str]


@dataclass(slots=True)
class SlotTable:
    """key -> {token: expiry}; expired leases are dropped whenever a key is looked at."""

    leases: dict[str, dict[str, float]] = field(default_factory=dict)

    def live(self, key: str, now: float) -> dict[str, float]:
        held = self.leases.get(key, {})
        for token in [t for t, expiry in held.items() if expiry <= now]:
            del held[token]
        if not held:
            self.leases.pop(key, None)
        return held

    def acquire(self, key: str, limit: int, token: str, lease: float, now: float) -> bool:
        """Take a slot for `token` if fewer than `limit` live leases hold `key` (idempotent)."""
        held = self.live(key, now)
        if token not in held and len(held) >= limit:
            return False
        self.leases.setdefault(key, held)[token] = now + lease
        return True

    def renew(self, slots: Sequence[Slot], lease: float, now: float) -> list[bool]:
        """Extend live leases; False for one that already lapsed (its slot may be reused)."""
        out = []
        for key, token in slots:
            held = self.live(key, now)
            ok = token in held
            if ok:
                held[token] = now + lease
            out.append(ok)
        return out

    def release(self, slots: Sequence[Slot]) -> None:
        for key, token in slots:
            held = self.leases.get(key)
            if held is not None:
                held.pop(token, None)
                if not held:
                    del self.leases[key]

    def count(self, key: str, now: float) -> int:
        return len(self.live(key, now))
