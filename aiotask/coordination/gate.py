"""The worker side of coordinated limits: messages wait here, on timers, before they start.

A message with a global rate limit or a concurrency limit enters `Gates.admit()` instead of a
worker slot. Per key, one pump asks the store for the whole local queue (FIFO), so a worker
makes about one store call per message plus one per retry-after, never a busy loop:

- rate stage: a granted reservation starts a timer for its start time; a refusal says when a
  reservation can be booked, and the pump sleeps until then;
- slot stage: a refused slot waits for a local release (an event) or a poll with backoff
  (SLOT_POLL_MIN..SLOT_POLL_MAX: a slot freed on another worker is seen within the cap).

Waiting messages stay held by the worker (their broker leases keep being renewed) and are
not delivery attempts; on shutdown `take()` hands them back uncounted. Past a bound, the
dispatcher parks further ones back in the broker as delayed messages (`park_delay`), so a
throttled backlog never fills the worker's prefetch and other tasks keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

from aiotask._backoff import Backoff
from aiotask._log import get_logger
from aiotask.coordination.ratelimit import RESERVE_AHEAD, interval_of

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from aiotask.coordination.concurrency import Slot
    from aiotask.coordination.spec import Limits
    from aiotask.coordination.store import CoordinationStore

log = get_logger(__name__)
#: Bounds of the poll for a slot freed by another worker (a local release wakes at once).
SLOT_POLL_MIN = 0.05
SLOT_POLL_MAX = 0.5
#: Pause after a store error before the pump asks again.
STORE_RETRY = 1.0
#: Bounds of the delay of a message parked back in the broker (see Dispatcher._gate).
PARK_MIN = 1.0
PARK_MAX = 30.0
PARK_RATE_MAX = 300.0

T = TypeVar("T", bound="Hashable")


class Gates(Generic[T]):
    """Holds items until their rate reservation and concurrency slot are granted, then calls
    `start(item)`; `finished(item)` frees the slot when the task ends."""

    def __init__(
        self,
        store: Callable[[], CoordinationStore],
        start: Callable[[T], None],
        lease: float,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._start = start
        self.lease = lease
        self.owner = owner or uuid.uuid4().hex
        self._rate_q: dict[str, deque[tuple[T, Limits]]] = {}
        self._slot_q: dict[str, deque[tuple[T, Limits]]] = {}
        self._timers: dict[T, tuple[asyncio.TimerHandle, Limits]] = {}
        self._pumps: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._freed: dict[str, asyncio.Event] = {}
        #: item -> the slot it holds while running
        self.slots: dict[T, Slot] = {}
        self._releases: set[asyncio.Task[None]] = set()
        #: rate key -> when the next message parked for it should come back (unix seconds)
        self._park_at: dict[str, float] = {}

    @property
    def waiting(self) -> int:
        """Items held here, not yet started."""
        queued = sum(map(len, self._rate_q.values())) + sum(map(len, self._slot_q.values()))
        return queued + len(self._timers)

    def park_delay(self, limits: Limits, parked: int, now: float) -> float:
        """How long a message that cannot be held here should wait in the broker (delayed).

        Rate-limited: parked messages of a key are spread one interval apart after the local
        queue and the reservation horizon, so they come back about when budget frees (a
        message that comes back too early is parked again, further out). Slot-limited: a
        backoff on how often this message was parked, PARK_MIN..PARK_MAX.
        """
        if limits.rate is None or limits.scope != "global":
            return min(PARK_MIN * 2.0 ** min(parked, 10), PARK_MAX)
        interval = interval_of(limits.rate)
        queued = len(self._rate_q.get(limits.rate_key, ()))
        due = max(self._park_at.get(limits.rate_key, 0.0), now + RESERVE_AHEAD + queued * interval)
        self._park_at[limits.rate_key] = due + interval
        if len(self._park_at) > 1000:  # forget keys whose parked messages are all due
            self._park_at = {k: t for k, t in self._park_at.items() if t > now}
        return min(due - now, PARK_RATE_MAX)

    def admit(self, item: T, limits: Limits) -> None:
        """Start `item` once its limits allow (never synchronously: the caller returns first)."""
        if limits.rate is not None and limits.scope == "global":
            self._enqueue("rate", self._rate_q, limits.rate_key, item, limits)
        else:
            self._to_slots(item, limits)

    def _enqueue(
        self, stage: str, queues: dict[str, deque[tuple[T, Limits]]], key: str, item: T, lim: Limits
    ) -> None:
        queues.setdefault(key, deque()).append((item, lim))
        if (stage, key) not in self._pumps:
            pump = self._rate_pump(key) if stage == "rate" else self._slot_pump(key)
            self._pumps[stage, key] = asyncio.create_task(pump, name=f"aiotask-{stage}-gate")

    def _to_slots(self, item: T, limits: Limits) -> None:
        self._timers.pop(item, None)
        if limits.concurrency is None:
            self._start(item)
        else:
            self._enqueue("slot", self._slot_q, limits.concurrency_key, item, limits)

    async def _rate_pump(self, key: str) -> None:
        queue = self._rate_q[key]
        loop = asyncio.get_running_loop()
        try:
            while queue:
                item, limits = queue[0]
                try:
                    grant = await self._store().take_rate(key, interval_of(limits.rate or 1.0))
                except Exception as exc:
                    log.warning("rate limit store failed for %s (retrying): %r", key, exc)
                    await asyncio.sleep(STORE_RETRY)
                    continue
                if not grant.granted:
                    await asyncio.sleep(grant.wait)
                    continue
                queue.popleft()
                if grant.wait <= 0:
                    self._to_slots(item, limits)
                else:
                    timer = loop.call_later(grant.wait, self._to_slots, item, limits)
                    self._timers[item] = (timer, limits)
        finally:
            self._done("rate", key, self._rate_q)

    async def _slot_pump(self, key: str) -> None:
        queue = self._slot_q[key]
        backoff = Backoff(SLOT_POLL_MIN, SLOT_POLL_MAX)
        freed = self._freed.setdefault(key, asyncio.Event())
        try:
            while queue:
                item, limits = queue[0]
                token = f"{self.owner}:{uuid.uuid4().hex}"
                freed.clear()
                limit = limits.concurrency or 1
                try:
                    ok = await self._store().acquire_slot(key, limit, token, self.lease)
                except Exception as exc:
                    log.warning("concurrency store failed for %s (retrying): %r", key, exc)
                    await asyncio.sleep(STORE_RETRY)
                    continue
                if ok:
                    queue.popleft()
                    backoff = Backoff(SLOT_POLL_MIN, SLOT_POLL_MAX)
                    self.slots[item] = (key, token)
                    self._start(item)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next_delay()):
                        await freed.wait()
        finally:
            self._done("slot", key, self._slot_q)

    def _done(self, stage: str, key: str, queues: dict[str, deque[tuple[T, Limits]]]) -> None:
        self._pumps.pop((stage, key), None)
        if not queues.get(key):
            queues.pop(key, None)
            if stage == "slot":
                self._freed.pop(key, None)

    def finished(self, item: T) -> None:
        """The task of `item` ended (any outcome): free its slot now, in the background."""
        slot = self.slots.pop(item, None)
        if slot is None:
            return
        freed = self._freed.get(slot[0])
        if freed is not None:
            freed.set()
        release = asyncio.create_task(self._release([slot]), name="aiotask-slot-release")
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    async def _release(self, slots: list[Slot]) -> None:
        try:
            await self._store().release_slots(slots)
        except Exception as exc:  # the lease lapses instead
            log.warning("releasing %d concurrency slots failed (they lapse): %r", len(slots), exc)

    async def renew(self) -> None:
        """Extend the leases of the slots of running tasks (called every lease / 3)."""
        held = list(self.slots.items())
        if not held:
            return
        renewed = await self._store().renew_slots([slot for _, slot in held], self.lease)
        for (_, slot), ok in zip(held, renewed, strict=True):
            if not ok:
                log.warning("concurrency slot %s lapsed while its task ran (renewals late)", slot)

    def take(self) -> list[T]:
        """Every waiting item, removed (shutdown hand-back); their pumps and timers stop."""
        for pump in self._pumps.values():
            pump.cancel()
        taken = [item for q in (*self._rate_q.values(), *self._slot_q.values()) for item, _ in q]
        for item, (timer, _) in self._timers.items():
            timer.cancel()
            taken.append(item)
        self._rate_q.clear()
        self._slot_q.clear()
        self._timers.clear()
        return taken

    async def aclose(self) -> None:
        """Wait (briefly) for background releases, so a stopped worker leaves no slot held."""
        if self._releases:
            await asyncio.wait(self._releases, timeout=5.0)


async def renew_slots(gates: Gates[T]) -> None:
    """The worker's side loop: renew held slots every lease / 3; a failed round is retried
    at the next tick (a slot lapses only after a whole lease without a renewal)."""
    while True:
        await asyncio.sleep(gates.lease / 3)
        try:
            await gates.renew()
        except Exception as exc:
            log.warning("renewing %d concurrency slots failed: %r", len(gates.slots), exc)
