"""A periodic entry and the pure rules of firing it: slot ids, jitter, catch-up and overlap.

Nothing here does I/O: the runner asks `plan()` what to do with an entry at an instant, and
the store makes the claim of each slot atomic across every beat process.
"""

from __future__ import annotations

import functools
import hashlib
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from aiotask.beat.schedule import Cron, Every, Schedule, make_schedule
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

Overlap = Literal["allow", "skip", "queue"]
CatchUp = Literal["none", "latest", "all"]
#: Slots one catch-up may send for catch_up="all" unless the entry says otherwise.
CATCH_UP_LIMIT = 100
#: Namespace of the deterministic task ids of slots (uuid5).
SLOT_NAMESPACE = uuid.UUID("8a2f3c1e-5b7d-4e0a-9c6f-2d1b3a4e5f60")
#: Keys a `beat_schedule` mapping entry may carry.
ENTRY_KEYS = frozenset(
    {
        "task", "cron", "every", "tz", "args", "kwargs", "queue", "priority", "overlap",
        "catch_up", "catch_up_limit", "jitter", "expires", "paused",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entry:
    """One periodic entry: what to send, when, and what to do about overlaps and misses."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    #: allow: send every slot; skip: drop a slot while the previous run is unfinished;
    #: queue: hold one slot until the previous run finishes (later ones are skipped)
    overlap: Overlap = "allow"
    #: slots missed while no beat ran: none (drop them), latest (send the last), all (up to limit)
    catch_up: CatchUp = "latest"
    catch_up_limit: int = CATCH_UP_LIMIT
    #: up to this many seconds of delay, the same for a slot on every beat (spreads load)
    jitter: float = 0.0
    #: a slot not sent within this many seconds of its instant is skipped ("expired"); the
    #: message also expires then, so a worker does not run it late
    expires: float | None = None
    paused: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.task:
            raise ConfigurationError("a periodic entry needs a name and a task name")
        if self.overlap not in get_args(Overlap):
            raise ConfigurationError(
                f"entry {self.name!r}: overlap must be allow, skip or queue, not {self.overlap!r}"
            )
        if self.catch_up not in get_args(CatchUp):
            raise ConfigurationError(
                f"entry {self.name!r}: catch_up must be none, latest or all, not {self.catch_up!r}"
            )
        if self.catch_up_limit < 1 or self.jitter < 0:
            raise ConfigurationError(
                f"entry {self.name!r}: catch_up_limit must be >= 1 and jitter >= 0"
            )
        if self.expires is not None and self.expires <= 0:
            raise ConfigurationError(f"entry {self.name!r}: expires must be positive")
        if self.priority is not None and not 0 <= self.priority <= 9:
            raise ConfigurationError(f"entry {self.name!r}: priority must be between 0 and 9")

    def slot_id(self, slot: float) -> str:
        """The task id of a slot: the same on every beat, so a slot is one task.

        `uuid.uuid5(SLOT_NAMESPACE, f"{name}\\0{ms}")`, computed from a hash of the name
        prefix made once per entry (a burst of 10,000 slots spends its time here otherwise).
        """
        digest = _name_hash(self.name).copy()
        digest.update(str(_slot_ms(slot)).encode())
        raw = bytearray(digest.digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def send_at(self, slot: float) -> float:
        """When a slot is sent: its instant plus this entry's jitter for it (same on every beat)."""
        if not self.jitter:
            return slot
        digest = hashlib.blake2b(self.slot_id(slot).encode(), digest_size=8).digest()
        return slot + self.jitter * (int.from_bytes(digest, "big") / 2**64)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the store for dynamic entries (and shown by `schedule list`)."""
        spec: dict[str, Any] = (
            {"cron": self.schedule.expr, "tz": self.schedule.tz}
            if isinstance(self.schedule, Cron)
            else {"every": self.schedule.seconds}
        )
        out: dict[str, Any] = {"task": self.task, **spec, "args": list(self.args)}
        out["kwargs"] = dict(self.kwargs)
        for key in ("queue", "priority", "expires"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(overlap=self.overlap, catch_up=self.catch_up, jitter=self.jitter)
        out.update(catch_up_limit=self.catch_up_limit, paused=self.paused)
        return out


def entry_from_mapping(name: str, spec: Mapping[str, Any]) -> Entry:
    """An entry from Celery-style `beat_schedule` / API keyword form, validated."""
    unknown = set(spec) - ENTRY_KEYS
    if unknown:
        raise ConfigurationError(
            f"periodic entry {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(ENTRY_KEYS))}"
        )
    if not isinstance(spec.get("task"), str):
        raise ConfigurationError(f"periodic entry {name!r} needs 'task': the task's name")
    try:
        schedule = make_schedule(cron=spec.get("cron"), every=spec.get("every"), tz=spec.get("tz"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"periodic entry {name!r}: {exc}") from None
    return Entry(
        name=name,
        task=spec["task"],
        schedule=schedule,
        args=tuple(spec.get("args") or ()),
        kwargs=dict(spec.get("kwargs") or {}),
        queue=spec.get("queue"),
        priority=spec.get("priority"),
        overlap=spec.get("overlap", "allow"),
        catch_up=spec.get("catch_up", "latest"),
        catch_up_limit=int(spec.get("catch_up_limit", CATCH_UP_LIMIT)),
        jitter=float(spec.get("jitter", 0.0)),
        expires=spec.get("expires"),
        paused=bool(spec.get("paused", False)),
    )


#: Re-check an entry held by overlap="queue" this often (seconds).
QUEUE_RECHECK = 1.0
#: Cron slots one plan() walks at most; a longer outage counts the rest as "at least".
MAX_WALK = 100_000


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with an entry now: slots to send (oldest first) and skips counted by reason."""

    send: list[float]
    skipped: dict[str, int]
    #: the newest slot this plan settles (sent or skipped): the claim moves the entry past it
    through: float | None
    #: when to look at this entry again (unix s)
    wake: float


def plan(entry: Entry, last: float | None, now: float, previous_running: bool = False) -> Plan:
    """Decide the due slots of `entry` at `now`, given the last slot claimed by any beat.

    `last` None means the entry never fired: it starts with the next slot after `now` (a new
    entry does not catch up on its past). `previous_running`: the last slot's task is still
    unfinished (only consulted when overlap is skip or queue).
    """
    sched = entry.schedule
    if last is None:
        return Plan([], {}, None, entry.send_at(sched.next_after(now)))
    keep = entry.catch_up_limit if entry.catch_up == "all" else 1
    due, missed = _due(sched, last, now, entry, keep)
    if not due:
        return Plan([], {}, None, entry.send_at(sched.next_after(last)))
    if previous_running and entry.overlap == "queue" and not entry.paused:
        return Plan([], {}, None, now + QUEUE_RECHECK)  # held until the previous run ends
    through = due[-1]
    wake = entry.send_at(sched.next_after(through))
    skipped: dict[str, int] = {}
    if missed:
        skipped["missed (catch_up_limit)" if entry.catch_up == "all" else "missed"] = missed
    send = due
    if entry.catch_up == "none" and (missed or len(due) > 1 or now > _on_time(entry, due[-1])):
        skipped["missed"] = skipped.get("missed", 0) + len(due)
        send = []
    if entry.expires is None and not entry.paused and not previous_running:
        return Plan(send, skipped, through, wake)  # nothing to drop (a burst's common case)
    for reason, drop in (
        ("expired", lambda s: entry.expires is not None and now > s + entry.expires),
        ("paused", lambda _s: entry.paused),
        ("overlap", lambda _s: previous_running and entry.overlap == "skip"),
    ):
        dropped = [s for s in send if drop(s)]
        if dropped:
            skipped[reason] = skipped.get(reason, 0) + len(dropped)
            send = [s for s in send if not drop(s)]
    return Plan(send, skipped, through, wake)


#: A slot sent within this many seconds after its send time is on time (catch_up="none").
ON_TIME = 60.0


def _on_time(entry: Entry, slot: float) -> float:
    return entry.send_at(slot) + ON_TIME


def _due(
    sched: Schedule, last: float, now: float, entry: Entry, keep: int
) -> tuple[list[float], int]:
    """The newest `keep` slots after `last` whose send time has come, and how many older
    ones were due too (missed)."""
    if isinstance(sched, Every) and not entry.jitter:
        first = math.floor(last / sched.seconds) + 1
        newest = math.floor(now / sched.seconds)
        count = max(newest - first + 1, 0)
        start = max(first, newest - keep + 1)
        return [round(n * sched.seconds, 6) for n in range(start, newest + 1)], count - (
            newest - start + 1 if count else 0
        )
    out: list[float] = []
    total = 0
    for walked, slot in enumerate(sched.slots(last)):
        if entry.send_at(slot) > now or walked >= MAX_WALK:
            break
        total += 1
        out.append(slot)
        if len(out) > keep:
            out.pop(0)
    return out, total - len(out)


@functools.lru_cache(maxsize=65536)
def _name_hash(name: str) -> hashlib._Hash:
    return hashlib.sha1(SLOT_NAMESPACE.bytes + name.encode() + b"\x00", usedforsecurity=False)


def _slot_ms(slot: float) -> int:
    return round(slot * 1000)
