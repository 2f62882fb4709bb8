"""Where beats agree: a watermark per entry, claimed atomically, plus dynamic entries.

Every beat keeps, per entry, a *watermark* in the store: every slot at or before it is settled
(sent or skipped). A beat fires slots after the watermark by moving it forward with a
compare-and-set (`claim`) from the watermark it read: only one beat wins a slot, whatever the
number of beats or their clocks. A claim records the slots it is about to send as *pending*;
`confirm` clears them once the broker has them. No beat claims past pending slots: the beat
that claimed them sends them again after a failed publish, and another beat does once they are
older than PENDING_TIMEOUT (their beat died between claim and publish), with the same task ids.

The store is byte-level: entries and states are JSON blobs, so a backend implements it with a
hash and a short Lua script (Redis) or a transaction (SQLite).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The control-channel payload that makes every beat reload its entries.
CHANGED = b'{"op":"schedules"}'
#: Seconds after which another beat re-sends a claimed slot that was never confirmed.
PENDING_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Claim:
    """Move `name`'s watermark from `since_ms` to `through_ms` and record `state` (JSON), if
    nobody moved it first.

    `since_ms`: the watermark the beat read and planned from (None: the entry had none). The
    claim wins only while the watermark is still there: a beat that read an older watermark
    than another beat's claim would otherwise also win, with a later `through_ms`, and send
    the slots between the two marks a second time.
    `init`: set the first watermark of a new entry only if it has none (never moves one).
    `expect`: instead of moving the watermark, replace the state only if it is byte-equal to
    `expect` (taking over a dead beat's pending slots: one beat wins).
    """

    name: str
    through_ms: int
    state: bytes
    init: bool = False
    expect: bytes | None = None
    since_ms: int | None = None


@dataclass(slots=True)
class StoredState:
    """An entry's watermark and the JSON state of its last claim (None: never claimed)."""

    watermark_ms: int | None = None
    state: bytes | None = None


class ScheduleStore(Protocol):
    """The store side of beat; see the module docstring for the contract."""

    async def entries(self) -> dict[str, bytes]:
        """Dynamic entries by name (JSON), as `app.schedules` wrote them."""
        ...

    async def put_entry(self, name: str, blob: bytes) -> None: ...

    async def remove_entry(self, name: str) -> bool:
        """Remove an entry with its watermark, state and counters; False if it did not exist."""
        ...

    async def paused(self) -> set[str]:
        """Names paused at run time (static entries included)."""
        ...

    async def set_paused(self, name: str, paused: bool) -> None: ...

    async def states(self, names: Sequence[str]) -> dict[str, StoredState]:
        """Watermarks and states of these entries (absent: never claimed), in one round trip."""
        ...

    async def skip_counts(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        """Slots skipped so far per entry, by reason (for `schedule list`)."""
        ...

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        """Compare-and-set every claim, atomically each, in one round trip; True where won."""
        ...

    async def settle(
        self, confirms: Sequence[tuple[str, int, bytes]], skips: Sequence[tuple[str, str, int]]
    ) -> None:
        """Confirm sent claims — (name, through_ms, state) replaces the state only while the
        watermark is still `through_ms` — and add skip counts (name, reason, n)."""
        ...


class MemoryScheduleStore:
    """One process's store (memory:// apps and tests): same contract, dicts behind it."""

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}
        self._paused: set[str] = set()
        self._states: dict[str, StoredState] = {}
        self._skips: dict[str, dict[str, int]] = {}

    async def entries(self) -> dict[str, bytes]:
        return dict(self._entries)

    async def put_entry(self, name: str, blob: bytes) -> None:
        self._entries[name] = blob

    async def remove_entry(self, name: str) -> bool:
        self._states.pop(name, None)
        self._skips.pop(name, None)
        self._paused.discard(name)
        return self._entries.pop(name, None) is not None

    async def paused(self) -> set[str]:
        return set(self._paused)

    async def set_paused(self, name: str, paused: bool) -> None:
        (self._paused.add if paused else self._paused.discard)(name)

    async def states(self, names: Sequence[str]) -> dict[str, StoredState]:
        out = {}
        for name in names:
            st = self._states.get(name)
            if st is not None:
                out[name] = StoredState(st.watermark_ms, st.state)
        return out

    async def skip_counts(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        return {n: dict(self._skips[n]) for n in names if n in self._skips}

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        won = []
        for c in claims:
            st = self._states.setdefault(c.name, StoredState())
            mark = st.watermark_ms
            if c.expect is not None:
                ok = st.state == c.expect
            elif c.init:
                ok = mark is None
            else:
                ok = mark == c.since_ms
            if ok:
                st.watermark_ms, st.state = c.through_ms, c.state
            won.append(ok)
        return won

    async def settle(
        self, confirms: Sequence[tuple[str, int, bytes]], skips: Sequence[tuple[str, str, int]]
    ) -> None:
        for name, through, state in confirms:
            st = self._states.get(name)
            if st is not None and st.watermark_ms == through:
                st.state = state
        for name, reason, n in skips:
            counts = self._skips.setdefault(name, {})
            counts[reason] = counts.get(reason, 0) + n
