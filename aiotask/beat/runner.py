"""The beat loop: sleep until the next due slot, claim it in the store, send it, confirm it.

Any number of beats may run against one store: a slot is sent by the beat whose claim moves
the entry's watermark past it (store.py), so no leader and no lease can split the brain. A
beat trusts its own clock only to decide *when* to try; a beat whose clock runs ahead sends a
slot early by its skew, one whose clock lags finds the slot already claimed.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from aiotask._backoff import Backoff
from aiotask._log import get_logger
from aiotask._time import now
from aiotask.beat.entry import Entry, entry_from_mapping, plan
from aiotask.beat.store import CHANGED, PENDING_TIMEOUT, Claim
from aiotask.exceptions import ConfigurationError
from aiotask.states import READY_STATES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from aiotask.app import App
    from aiotask.beat.entry import Plan
    from aiotask.beat.store import ScheduleStore, StoredState
    from aiotask.protocol import Message

log = get_logger(__name__)
#: Longest sleep between two looks at the store (covers a missed change broadcast).
MAX_SLEEP = 30.0
#: Entries fired per batch (one claim and one publish each), and batches in flight at once.
FIRE_BATCH = 500
FIRE_PIPELINE = 3
#: Seconds between looks at another beat's claim that is not confirmed yet (its publish is
#: normally in flight for milliseconds).
PENDING_RECHECK = 0.2


@dataclass(slots=True)
class _Due:
    """Per-tick work for one entry."""

    entry: Entry
    stored: StoredState | None
    plan: Plan | None = None
    resend: list[tuple[int, str]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    #: (watermark, state) to record once the broker has `messages`
    confirm: tuple[int, dict[str, Any]] = (0, {})
    #: only record `confirm`: this beat published its own pending claim, then failed to settle
    reconfirm: bool = False
    #: when to look again if there is no plan (None: in a second)
    wake: float | None = None


class Beat:
    """Sends the due slots of every entry of an app; safe to run on every host at once."""

    def __init__(
        self,
        app: App,
        store: ScheduleStore,
        static: Mapping[str, Entry],
        *,
        clock: Callable[[], float] = now,
        name: str | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.static = dict(static)
        self.clock = clock
        # unique even for two beats of one process, or of two hosts that share a hostname
        # and a pid (containers): a beat resends its *own* unconfirmed claims at once
        self.name = name or f"beat@{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.changed.set()  # load entries on the first tick
        self.sent = 0
        #: entry -> watermark of this beat's claims that the broker has but the store does
        #: not know yet (the settle failed): confirmed on the next tick, never sent again
        self._unsettled: dict[str, int] = {}

    def check(self) -> None:
        """Refuse to start with an entry whose task this app does not know (exit 2 in the CLI)."""
        check_entries(self.app, self.static.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; store or broker outages are waited out, not fatal."""
        self.check()
        listener = asyncio.create_task(self._listen(), name="aiotask-beat-changes")
        backoff = Backoff(first=0.5, cap=10.0)
        try:
            while not stop.is_set():
                try:
                    delay = await self.tick()
                    backoff.reset()
                except Exception as exc:  # the store or broker is down: try again later
                    delay = backoff.next_delay()
                    log.warning("beat %s: tick failed (%s); again in %.1fs", self.name, exc, delay)
                await _sleep(delay, stop, self.changed)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _listen(self) -> None:
        backend = self.app.backend
        if backend is None:
            return
        while True:
            try:
                async for payload in backend.control():
                    if payload == CHANGED:
                        self.changed.set()
            except Exception as exc:
                log.warning("beat %s: change notifications lost (%s); retrying", self.name, exc)
                await asyncio.sleep(1.0)

    async def reload(self) -> None:
        """Static entries + dynamic ones from the store, with run-time pauses applied."""
        self.changed.clear()
        dynamic, paused = await self.store.entries(), await self.store.paused()
        entries = dict(self.static)
        for name, blob in dynamic.items():
            try:
                entries[name] = entry_from_mapping(name, orjson.loads(blob))
            except (ConfigurationError, orjson.JSONDecodeError, TypeError) as exc:
                log.error("beat %s: ignoring stored entry %r: %s", self.name, name, exc)
        for name in paused & entries.keys():
            entries[name] = _replace(entries[name], paused=True)
        changed = {n for n, e in entries.items() if self.entries.get(n) != e}
        self.entries = entries
        for name in changed:
            self._schedule(name, -math.inf)  # look at changed entries now
        self._heap = [(t, n) for t, n in self._heap if n in entries]
        heapq.heapify(self._heap)
        self._wake = {n: t for n, t in self._wake.items() if n in entries}

    def _schedule(self, name: str, when: float) -> None:
        self._wake[name] = when
        heapq.heappush(self._heap, (when, name))

    async def tick(self) -> float:
        """Send what is due now; return the seconds until the next slot."""
        if self.changed.is_set():
            await self.reload()
        wall = self.clock()
        due: dict[str, None] = {}  # once each: an entry can be in the heap twice at one
        while self._heap and self._heap[0][0] <= wall:  # instant (a reload re-adds it), and
            when, name = heapq.heappop(self._heap)  # two claims of one entry in one batch
            if self._wake.get(name) == when:  # lose to each other after moving its watermark
                due[name] = None
        names = list(due)
        if names:
            await self._fire_batches(names, wall)
        return (self._heap[0][0] - self.clock()) if self._heap else MAX_SLEEP

    async def _fire_batches(self, names: Sequence[str], wall: float) -> None:
        """Fire a burst in batches of FIRE_BATCH, up to FIRE_PIPELINE at once: each batch is
        one read, one claim, one publish and one settle round trip, and while one batch waits
        on the network the next is planned, so the first slots of a burst go out at once."""
        gate = asyncio.Semaphore(FIRE_PIPELINE)

        async def one(batch: Sequence[str]) -> None:
            async with gate:
                try:
                    await self._fire(batch, wall)
                except BaseException:
                    for name in batch:  # look again after the outage; pending claims are resent
                        self._schedule(name, wall + 1.0)
                    raise

        batches = [names[i : i + FIRE_BATCH] for i in range(0, len(names), FIRE_BATCH)]
        if len(batches) == 1:
            await one(batches[0])
            return
        outcomes = await asyncio.gather(*(one(b) for b in batches), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _fire(self, names: Sequence[str], wall: float) -> None:
        stored = await self.store.states(names)
        work = [_Due(self.entries[n], stored.get(n)) for n in names]
        running = await self._running(work)
        claims: list[Claim] = []
        for due in work:
            claims += self._plan(due, wall, due.entry.name in running)
        won = await self.store.claim(claims) if claims else []
        lost = {c.name for c, ok in zip(claims, won, strict=True) if not ok}
        sending = [
            d for d in work if d.entry.name not in lost and (d.plan or d.resend or d.reconfirm)
        ]
        messages = [m for d in sending for m in d.messages]
        if messages:
            await self.app.publish(messages)  # raises: claims stay pending, resent next tick
            self.sent += len(messages)
        sent_at = self.clock()
        confirms = [
            (d.entry.name, d.confirm[0], orjson.dumps({**d.confirm[1], "sent_at": sent_at}))
            for d in sending
            if d.messages or d.reconfirm
        ]
        for name, through, _ in confirms:
            self._unsettled[name] = through
        skips = [
            (d.entry.name, reason, n)
            for d in sending
            if d.plan is not None
            for reason, n in d.plan.skipped.items()
        ]
        if confirms or skips:
            await self.store.settle(confirms, skips)
        for name, _, _ in confirms:
            del self._unsettled[name]
        for due in work:
            wake = due.plan.wake if due.plan is not None else due.wake or wall + 1.0
            if due.entry.name in lost:
                wake = wall  # another beat moved first: re-read its watermark now
            self._schedule(due.entry.name, wake if math.isfinite(wake) else wall + MAX_SLEEP)
        for due in sending:
            for message in due.messages:
                log.info(
                    "beat %s: sent %s[%s] for entry %s",
                    self.name,
                    message.task,
                    message.id,
                    due.entry.name,
                )

    async def _running(self, work: Sequence[_Due]) -> set[str]:
        """Entries (with an overlap policy) whose last sent run has not finished."""
        backend = self.app.backend
        ids: dict[str, str] = {}
        for due in work:
            if due.entry.overlap != "allow" and due.stored is not None and due.stored.state:
                last_id = orjson.loads(due.stored.state).get("task_id")
                if last_id:
                    ids[due.entry.name] = last_id
        if not ids or backend is None:
            return set()
        records = await backend.get_many(list(ids.values()))
        return {
            name
            for (name, _), rec in zip(ids.items(), records, strict=True)
            if rec is None or rec.state not in READY_STATES
        }

    def _plan(self, due: _Due, wall: float, running: bool) -> list[Claim]:
        entry, stored = due.entry, due.stored
        if stored is None or stored.watermark_ms is None:
            due.plan = plan(entry, None, wall)
            return [Claim(entry.name, _ms(wall), b"{}", init=True)]
        mark, blob = stored.watermark_ms, stored.state or b"{}"
        state = orjson.loads(blob)
        pending = state.get("pending") or []
        if pending:
            return self._unconfirmed(due, mark, blob, state, wall)
        due.plan = p = plan(entry, mark / 1000, wall, running)
        if p.through is None:
            return []
        sends = [(_ms(s), entry.slot_id(s)) for s in p.send]
        due.messages = [self._message(entry, ms / 1000, tid) for ms, tid in sends]
        last = {
            "slot": _ms(p.through),
            "task_id": sends[-1][1] if sends else state.get("task_id"),
            "sent_slot": sends[-1][0] if sends else state.get("sent_slot"),
            "beat": self.name,
        }
        due.confirm = (_ms(p.through), {**last, "pending": []})
        claimed = {**last, "pending": sends, "claimed_at": wall}
        return [Claim(entry.name, _ms(p.through), orjson.dumps(claimed), since_ms=mark)]

    def _unconfirmed(
        self, due: _Due, mark: int, blob: bytes, state: dict[str, Any], wall: float
    ) -> list[Claim]:
        """The last claim's slots are not confirmed sent. No beat claims past them (that
        would drop them, and with them a dead beat's slots): its own failed publish is sent
        again now, another beat's once PENDING_TIMEOUT passed without a confirm (that beat
        died between claim and publish), and until then it is looked at again shortly."""
        entry, pending = due.entry, state["pending"]
        own = state.get("beat") == self.name
        due.confirm = (mark, {**state, "pending": [], "beat": self.name})
        due.wake = wall  # once sent and confirmed, plan the slots after at once
        if own and self._unsettled.get(entry.name) == mark:
            due.reconfirm = True  # published; only the store did not hear of it
            return []
        age = wall - float(state.get("claimed_at", 0))
        if not own and age <= PENDING_TIMEOUT:
            due.wake = wall + min(PENDING_RECHECK, PENDING_TIMEOUT - age + 0.01)
            return []
        if not own:
            log.warning(
                "beat %s: %s's claim of %d slot(s) of %s was not confirmed in %.0fs; "
                "sending them again",
                self.name,
                state.get("beat", "another beat"),
                len(pending),
                entry.name,
                age,
            )
        due.resend = [(int(ms), str(tid)) for ms, tid in pending]
        due.messages = [self._message(entry, ms / 1000, tid) for ms, tid in due.resend]
        fresh = {**state, "claimed_at": wall, "beat": self.name}
        return [Claim(entry.name, mark, orjson.dumps(fresh), expect=blob)]

    def _message(self, entry: Entry, slot: float, task_id: str) -> Message:
        options: dict[str, Any] = {}
        if entry.queue is not None:
            options["queue"] = entry.queue
        if entry.priority is not None:
            options["priority"] = entry.priority
        if entry.expires is not None:
            options["expires"] = datetime.fromtimestamp(slot + entry.expires, UTC)
        return self.app.message_factory(
            entry.task, list(entry.args), dict(entry.kwargs), options, task_id
        )


def check_entries(app: App, entries: Iterable[Entry]) -> None:
    """Every entry names a task registered in `app`, or a ConfigurationError says which."""
    for entry in entries:
        if entry.task not in app.tasks:
            raise ConfigurationError(
                f"periodic entry {entry.name!r}: task {entry.task!r} is not registered "
                "in this app (import its module in the app, or fix the name)"
            )


def _replace(entry: Entry, **changes: Any) -> Entry:
    from dataclasses import replace

    return replace(entry, **changes)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


async def _sleep(delay: float, stop: asyncio.Event, changed: asyncio.Event) -> None:
    """Sleep up to `delay`, waking at once on stop or a schedule change (no polling)."""
    if delay <= 0:
        await asyncio.sleep(0)
        return
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())]
    try:
        await asyncio.wait(
            waits, timeout=min(delay, MAX_SLEEP), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for w in waits:
            w.cancel()
