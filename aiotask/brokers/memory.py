"""An in-process broker with the full delivery contract: leases, redelivery, delays, dead letters.

For tests and demos in one process; it exercises the same worker paths as a server broker.
Waiting is event-driven: `receive` sleeps until a publish, a nack, or the next due eta or
lease expiry, never on a fixed interval.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiotask._time import monotonic, now
from aiotask.brokers._common import (
    DEAD_LETTER_CAP,
    MAX_PRIORITY,
    clamp_priority,
    exhausted,
    exhausted_reason,
    tokens,
)
from aiotask.brokers._fair import FairHeap
from aiotask.brokers.base import (
    EVENTS_CAP,
    BrokerCapabilities,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Sequence

    from aiotask.settings import Settings


@dataclass(slots=True, eq=False)
class _Entry:
    message_id: str
    body: bytes
    queue: str
    priority: int
    deliveries: int = 0
    fair_key: str = ""  # fairness: served round-robin across keys (brokers/_fair.py)


class MemoryBroker:
    """memory:// — one instance per App; nothing crosses processes."""

    capabilities = BrokerCapabilities(
        priorities=True, max_priority=MAX_PRIORITY, native_delay=True, push=True, fairness=True
    )

    def __init__(self, settings: Settings) -> None:
        self._lease = settings.visibility_timeout
        self._max_deliveries = settings.max_deliveries
        self._seq = itertools.count()
        self._ready: dict[str, FairHeap[_Entry]] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []
        self._leased: dict[int, tuple[_Entry, float]] = {}
        self._dead: dict[str, list[DeadLetter]] = {}
        self._changed: asyncio.Event | None = None
        #: the capped event stream, and each live follower's unread events
        self.event_log: deque[bytes] = deque(maxlen=EVENTS_CAP)
        self._followers: list[tuple[deque[bytes], asyncio.Event]] = []

    async def connect(self) -> None:
        self._changed = asyncio.Event()

    async def close(self) -> None:
        # Unsettled messages go back to their queues, as a server broker would redeliver them.
        for entry, _deadline in self._leased.values():
            self._push(entry)
        self._leased.clear()

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _push(self, entry: _Entry) -> None:
        ready = self._ready.get(entry.queue)
        if ready is None:
            ready = self._ready[entry.queue] = FairHeap()
        ready.push(entry.fair_key, (-entry.priority, next(self._seq), entry))
        self._event().set()

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        wall = now()
        for out in batch:
            entry = _Entry(
                out.message_id, out.body, out.queue, clamp_priority(out.priority), 0, out.fair_key
            )
            if out.eta is not None and out.eta > wall:
                heapq.heappush(self._delayed, (out.eta, next(self._seq), entry))
                self._event().set()
            else:
                self._push(entry)

    def _promote(self) -> float | None:
        """Move due delayed messages and lapsed leases to their queues; seconds to the next."""
        wall, mono = now(), monotonic()
        while self._delayed and self._delayed[0][0] <= wall:
            self._push(heapq.heappop(self._delayed)[2])
        for token, (entry, deadline) in list(self._leased.items()):
            if deadline <= mono:
                del self._leased[token]
                self._push(entry)
        waits = [self._delayed[0][0] - wall] if self._delayed else []
        waits += [deadline - mono for _, deadline in self._leased.values()]
        return max(min(waits), 0.0) if waits else None

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        for queue in queues:
            ready = self._ready.get(queue)
            while ready is not None and len(out) < limit:
                entry = ready.pop()
                if entry is None:
                    break
                if exhausted(entry.deliveries, self._max_deliveries):
                    self._bury(entry, exhausted_reason(entry.deliveries, self._max_deliveries))
                    continue
                entry.deliveries += 1
                token = next(self._seq)
                self._leased[token] = (entry, monotonic() + self._lease)
                out.append(Delivery(entry.body, queue, entry.message_id, entry.deliveries, token))
        return out

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        event = self._event()
        while True:
            event.clear()
            next_due = self._promote()
            got = self._take(queues, limit)
            if got:
                return got
            try:
                async with asyncio.timeout(next_due):
                    await event.wait()
            except TimeoutError:
                pass

    def _settle(self, deliveries: Sequence[Delivery]) -> list[_Entry]:
        entries = []
        for token in tokens(deliveries, int):
            leased = self._leased.pop(token, None)
            if leased is not None:
                entries.append(leased[0])
        return entries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._settle(deliveries)

    async def heartbeat(self) -> None:
        """A no-op: producer and consumers share one process, so a dead consumer is a closed
        broker (close() hands its messages back at once), and a live one is never taken over."""

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        for entry in self._settle(deliveries):
            if not requeue:
                self._bury(entry, reason or "rejected")
                continue
            if not counted:
                entry.deliveries -= 1  # an unstarted hand-back is not a failed delivery
            # counted (started, abandoned): _take dead-letters it once it is exhausted
            self._push(entry)

    def _bury(self, entry: _Entry, reason: str) -> None:
        dead = self._dead.setdefault(entry.queue, [])
        dead.append(
            DeadLetter(entry.message_id, entry.body, reason, entry.queue, now(), next(self._seq))
        )
        if len(dead) > DEAD_LETTER_CAP:
            del dead[: len(dead) - DEAD_LETTER_CAP]

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        deadline = monotonic() + self._lease
        for token in tokens(deliveries, int):
            leased = self._leased.get(token)
            if leased is not None:
                self._leased[token] = (leased[0], deadline)

    async def purge(self, queue: str) -> int:
        count = len(self._ready.pop(queue, []))
        kept = [item for item in self._delayed if item[2].queue != queue]
        count += len(self._delayed) - len(kept)
        self._delayed = kept
        heapq.heapify(self._delayed)
        return count

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self._dead.get(queue, [])[:limit]

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        """Remove these entries (by their token) from `queue`'s dead letters; returns how many."""
        wanted = {d.token for d in dead if isinstance(d.token, int)}
        current = self._dead.get(queue, [])
        kept = [d for d in current if d.token not in wanted]
        self._dead[queue] = kept
        return len(current) - len(kept)

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        self._promote()  # due delays and lapsed leases count as ready, as receive would see
        out = []
        for queue in queues:
            delayed = sum(1 for item in self._delayed if item[2].queue == queue)
            leased = sum(1 for entry, _ in self._leased.values() if entry.queue == queue)
            ready = len(self._ready.get(queue, []))
            out.append(QueueStats(queue, ready, delayed, leased, len(self._dead.get(queue, []))))
        return out

    async def known_queues(self) -> list[str]:
        names = {q for q, ready in self._ready.items() if len(ready)}
        names |= {q for q, dead in self._dead.items() if dead}
        names |= {item[2].queue for item in self._delayed}
        names |= {entry.queue for entry, _ in self._leased.values()}
        return sorted(names)

    # -- monitoring events (EventStream) ---------------------------------------------------

    async def emit_events(self, batch: Sequence[bytes]) -> None:
        """Append to the capped log and to every follower's (equally capped) backlog."""
        self.event_log.extend(batch)
        for backlog, wake in self._followers:
            backlog.extend(batch)
            wake.set()

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        follower: tuple[deque[bytes], asyncio.Event] = (deque(maxlen=EVENTS_CAP), asyncio.Event())
        self._followers.append(follower)
        stream = _drain(*follower)
        try:
            yield stream
        finally:
            self._followers.remove(follower)
            await stream.aclose()  # a follower cancelled mid-iteration leaves it suspended


async def _drain(backlog: deque[bytes], wake: asyncio.Event) -> AsyncGenerator[bytes, None]:
    while True:
        while backlog:
            yield backlog.popleft()
        wake.clear()
        await wake.wait()
