"""`app.schedules`: add, change, pause, resume, remove, list and run entries at run time.

Dynamic entries live in the result backend's store, so every beat (on any host) sees them;
each change is broadcast on the control channel and running beats reload at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from aiotask._time import now
from aiotask.beat.entry import Entry, entry_from_mapping
from aiotask.beat.store import CHANGED
from aiotask.exceptions import ConfigurationError, NotRegistered

if TYPE_CHECKING:
    from aiotask.app import App
    from aiotask.beat.store import ScheduleStore
    from aiotask.result import AsyncResult


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """What `schedule list` shows for one entry."""

    name: str
    task: str
    schedule: str
    source: str  # "code" (app.periodic / beat_schedule) or "dynamic" (app.schedules)
    paused: bool
    next_run: float | None
    last_slot: float | None = None
    last_task_id: str | None = None
    last_state: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "schedule": self.schedule,
            "source": self.source,
            "paused": self.paused,
            "next_run": self.next_run,
            "last_run": {
                "slot": self.last_slot,
                "task_id": self.last_task_id,
                "state": self.last_state,
            },
            "skipped": self.skipped,
            "entry": self.entry,
        }


class Schedules:
    """The run-time schedule API of one app (`app.schedules`)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def store(self) -> ScheduleStore:
        backend = await self.app.result_backend()
        return backend.schedule_store(self.app.main)

    async def add(self, name: str, *, task: str, **spec: Any) -> ScheduleInfo:
        """Add (or replace) a dynamic entry: `add("n", task="proj.x", every=60)` or cron=..."""
        entry = entry_from_mapping(name, {"task": task, **spec})
        if entry.task not in self.app.tasks:
            raise NotRegistered(
                f"{entry.task} (periodic entry {name!r}): import the task's module in the app"
            )
        if name in self.app.beat_entries:
            raise ConfigurationError(
                f"periodic entry {name!r} is defined in code; pick another name (or pause it)"
            )
        store = await self.store()
        await store.put_entry(name, orjson.dumps(entry.to_dict()))
        await self._changed()
        return await self.get(name)

    async def change(self, name: str, **changes: Any) -> ScheduleInfo:
        """Change some fields of a dynamic entry (e.g. `cron=`), keeping the others."""
        store = await self.store()
        current = (await store.entries()).get(name)
        if current is None:
            raise ConfigurationError(f"no dynamic periodic entry named {name!r}")
        spec = orjson.loads(current)
        if "cron" in changes or "every" in changes:
            spec = {k: v for k, v in spec.items() if k not in ("cron", "every", "tz")}
        spec.update(changes)
        return await self.add(name, **spec)

    async def pause(self, name: str) -> None:
        await self._known(name)
        await (await self.store()).set_paused(name, True)
        await self._changed()

    async def resume(self, name: str) -> None:
        await self._known(name)
        await (await self.store()).set_paused(name, False)
        await self._changed()

    async def remove(self, name: str) -> bool:
        """Remove a dynamic entry (entries defined in code can only be paused)."""
        if name in self.app.beat_entries:
            raise ConfigurationError(
                f"periodic entry {name!r} is defined in code: pause it, or remove it from the code"
            )
        removed = await (await self.store()).remove_entry(name)
        await self._changed()
        return removed

    async def run_now(self, name: str) -> AsyncResult[Any]:
        """Send the entry's task now, outside its schedule (its slots are unaffected)."""
        entry = (await self._entries()).get(name)
        if entry is None:
            raise ConfigurationError(f"no periodic entry named {name!r}")
        options: dict[str, Any] = {}
        if entry.queue is not None:
            options["queue"] = entry.queue
        if entry.priority is not None:
            options["priority"] = entry.priority
        return await self.app.send_task(entry.task, list(entry.args), dict(entry.kwargs), **options)

    async def get(self, name: str) -> ScheduleInfo:
        for info in await self.list():
            if info.name == name:
                return info
        raise ConfigurationError(f"no periodic entry named {name!r}")

    async def list(self) -> list[ScheduleInfo]:
        """Every entry, code and dynamic, with its next and last run and skip counts."""
        entries = await self._entries()
        store = await self.store()
        names = sorted(entries)
        states = await store.states(names)
        skips = await store.skip_counts(names)
        last_ids: dict[str, str] = {}
        parsed: dict[str, dict[str, Any]] = {}
        for name, st in states.items():
            parsed[name] = orjson.loads(st.state) if st.state else {}
            if parsed[name].get("task_id"):
                last_ids[name] = parsed[name]["task_id"]
        backend = await self.app.result_backend()
        records = await backend.get_many(list(last_ids.values())) if last_ids else []
        last_states = {
            n: r.state if r else "PENDING" for n, r in zip(last_ids, records, strict=True)
        }
        wall = now()
        out = []
        for name in names:
            e = entries[name]
            last = parsed.get(name, {})
            mark = states[name].watermark_ms if name in states else None
            after = max(wall, (mark or 0) / 1000)
            out.append(
                ScheduleInfo(
                    name=name,
                    task=e.task,
                    schedule=e.schedule.describe(),
                    source="code" if name in self.app.beat_entries else "dynamic",
                    paused=e.paused,
                    next_run=None if e.paused else e.send_at(e.schedule.next_after(after)),
                    last_slot=last["sent_slot"] / 1000 if last.get("sent_slot") else None,
                    last_task_id=last_ids.get(name),
                    last_state=last_states.get(name),
                    skipped=skips.get(name, {}),
                    entry=e.to_dict(),
                )
            )
        return out

    async def _entries(self) -> dict[str, Entry]:
        store = await self.store()
        entries = dict(self.app.beat_entries)
        for name, blob in (await store.entries()).items():
            entries[name] = entry_from_mapping(name, orjson.loads(blob))
        for name in await store.paused():
            if name in entries:
                entries[name] = replace(entries[name], paused=True)
        return entries

    async def _known(self, name: str) -> None:
        if name not in await self._entries():
            raise ConfigurationError(f"no periodic entry named {name!r}")

    async def _changed(self) -> None:
        backend = await self.app.result_backend()
        await backend.broadcast(CHANGED)
