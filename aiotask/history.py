"""Task history kept in the store: what the dashboard's task list, search and canvas pages read.

The event stream is capped and lives only as long as its newest entries, so it is no history.
The dashboard folds events into one `HistoryRecord` per task and writes the records in batches
to a `HistoryStore` that the result backend provides (`backend.history_store(app_name)`): a
table in SQLite and PostgreSQL, hashes and sorted sets in Redis, dicts in memory. A dashboard
started again reads what the one before it wrote. Records are pruned per state after the
`history_retention` setting (see docs/dashboard.md).

The store is a dumb table: it never folds events itself (the dashboard does, see
aiotask/dashboard/history.py), so every implementation is an upsert, a filtered listing
newest-first, and a delete of expired rows in batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

#: Characters of the arguments (JSON) and of the error text kept per task.
MAX_TEXT = 2_000
#: Rows deleted per statement / round trip when pruning.
PRUNE_BATCH = 1_000
#: Entries of a task's timeline kept (retries and replays add some).
MAX_TIMELINE = 50


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One task as the dashboard last saw it (every timestamp is unix seconds)."""

    id: str
    name: str
    state: str
    queue: str = ""
    worker: str = ""
    seen_at: float = 0.0
    updated_at: float = 0.0
    runtime: float | None = None
    retries: int = 0
    exception_type: str | None = None
    exception: str | None = None
    #: the arguments as JSON text (cut to MAX_TEXT); None when no event carried them
    args: str | None = None
    kwargs: str | None = None
    #: True when `args`/`kwargs` are the exact JSON sent (the dashboard's own sends): then the
    #: task can be sent again from the page
    exact_args: bool = False
    #: canvas links: the first task of the workflow, the task whose success sent this one,
    #: the group (or chord header) this one belongs to
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    #: (event type, unix seconds, who emitted it), oldest first
    timeline: tuple[tuple[str, float, str], ...] = field(default=())

    def text(self) -> str:
        """What a search by content looks in: arguments and error, lower case."""
        parts = [self.args or "", self.kwargs or ""]
        if self.exception_type:
            parts.append(f"{self.exception_type}: {self.exception or ''}")
        return "\n".join(parts).lower()

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson encodes a (slots) dataclass natively, fast

    @classmethod
    def from_json(cls, raw: bytes | str) -> HistoryRecord:
        data = orjson.loads(raw)
        data["timeline"] = tuple(map(tuple, data.get("timeline") or ()))
        if data.keys() <= _FIELDS:
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})  # a newer writer's keys


_FIELDS = frozenset(f.name for f in fields(HistoryRecord))


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A filter over the history; every given condition must hold. Newest activity first.

    `q`: a task id (exact, or a prefix), or a substring, in any case, of the task name, the
    arguments or the error text. `since`/`until` bound `updated_at` (unix seconds)."""

    q: str = ""
    state: str = ""
    name: str = ""
    worker: str = ""
    since: float | None = None
    until: float | None = None
    limit: int = 50
    offset: int = 0

    @property
    def filtered(self) -> bool:
        return bool(
            self.q.strip()
            or self.state
            or self.name
            or self.worker
            or self.since is not None
            or self.until is not None
        )

    def page(self, limit: int, offset: int = 0) -> HistoryQuery:
        return replace(self, limit=limit, offset=offset)


def matches(record: HistoryRecord, query: HistoryQuery) -> bool:
    """Whether `record` fits `query` (the reference the stores' own queries follow)."""
    if query.state and record.state != query.state:
        return False
    if query.name and record.name != query.name:
        return False
    if query.worker and record.worker != query.worker:
        return False
    if query.since is not None and record.updated_at < query.since:
        return False
    if query.until is not None and record.updated_at > query.until:
        return False
    needle = query.q.strip()
    if not needle:
        return True
    if record.id.startswith(needle):
        return True
    lowered = needle.lower()
    return lowered in record.name.lower() or lowered in record.text()


def prefilter(query: HistoryQuery) -> Callable[[bytes], bool]:
    """A cheap test on a record's JSON that every match passes (most others fail), so a store
    that filters in Python decodes only the likely rows: the text conditions, JSON-escaped,
    must appear in the raw bytes."""
    needles: list[bytes] = []
    for key, value in (("name", query.name), ("worker", query.worker)):
        if value:
            needles.append(f'"{key}":'.encode() + orjson.dumps(value))
    text = query.q.strip()
    lowered = orjson.dumps(text.lower())[1:-1] if text and text.isascii() else b""

    def test(raw: bytes) -> bool:
        if not all(n in raw for n in needles):
            return False
        return not lowered or lowered in raw.lower()

    return test


@dataclass(frozen=True, slots=True)
class Bucket:
    """Tasks that finished in [start, start + width): succeeded and failed."""

    start: float
    succeeded: int = 0
    failed: int = 0


@runtime_checkable
class HistoryStore(Protocol):
    """Where task history lives; see the module docstring."""

    async def put(self, records: Sequence[HistoryRecord]) -> None:
        """Insert or replace these records (by id), in one round trip or transaction."""
        ...

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, HistoryRecord]:
        """The records of these ids that exist."""
        ...

    async def search(self, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        """`query.limit` records from `query.offset`, newest activity first, and the total."""
        ...

    async def family(self, root_id: str, limit: int) -> list[HistoryRecord]:
        """A workflow, oldest first: the task `root_id`, every task whose root it is, and every
        member of the group of that id."""
        ...

    async def counts(self) -> dict[str, int]:
        """Records per state."""
        ...

    async def finished(self, since: float, width: float) -> list[Bucket]:
        """Successes and failures per `width` seconds from `since` to now (the chart)."""
        ...

    async def prune(self, retention: Mapping[str, float], now: float, batch: int) -> int:
        """Delete up to `batch` records per state whose last change is older than that
        state's retention (seconds); states not in `retention` are kept. How many went."""
        ...

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete the records of these ids (the dashboard's bulk delete); how many were there."""
        ...

    async def clear(self) -> None:
        """Delete the whole history of this app (tests, `history reset`), and its cursor."""
        ...

    async def get_cursor(self) -> str | None:
        """The event stream position the history was written up to (None: never written), so
        a dashboard started later resumes there (see aiotask.brokers.base.EventLog)."""
        ...

    async def put_cursor(self, cursor: str) -> None:
        """Save that position (after the records of the events up to it are `put`)."""
        ...


@runtime_checkable
class HasHistory(Protocol):
    """A result backend that can keep task history."""

    def history_store(self, app_name: str) -> HistoryStore: ...


def bucket_index(at: float, since: float, width: float) -> int:
    return int((at - since) // width)


def empty_buckets(since: float, width: float, now: float) -> list[Bucket]:
    count = max(int((now - since) // width) + 1, 1)
    return [Bucket(since + i * width) for i in range(count)]


def fill_buckets(
    rows: Sequence[tuple[float, str]], since: float, width: float, now: float
) -> list[Bucket]:
    """(updated_at, state) of finished records -> buckets (SUCCESS and FAILURE counted)."""
    done = [0] * len(empty_buckets(since, width, now))
    failed = [0] * len(done)
    for at, state in rows:
        i = bucket_index(at, since, width)
        if 0 <= i < len(done):
            if state == "SUCCESS":
                done[i] += 1
            elif state == "FAILURE":
                failed[i] += 1
    return [Bucket(since + i * width, done[i], failed[i]) for i in range(len(done))]


def buckets_of(
    counted: Sequence[tuple[int, str, int]], since: float, width: float, now: float
) -> list[Bucket]:
    """(bucket index, state, count) rows counted by a store -> buckets."""
    buckets = empty_buckets(since, width, now)
    done = [0] * len(buckets)
    failed = [0] * len(buckets)
    for i, state, n in counted:
        if 0 <= i < len(buckets):
            if state == "SUCCESS":
                done[i] += n
            elif state == "FAILURE":
                failed[i] += n
    return [Bucket(b.start, done[i], failed[i]) for i, b in enumerate(buckets)]


class MemoryHistoryStore:
    """The history in this process (memory:// backends, tests): lost when it exits."""

    def __init__(self) -> None:
        self.rows: dict[str, HistoryRecord] = {}
        self.cursor: str | None = None

    async def put(self, records: Sequence[HistoryRecord]) -> None:
        for r in records:
            self.rows.pop(r.id, None)  # keep dict order = order of last change
            self.rows[r.id] = r

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, HistoryRecord]:
        return {t: self.rows[t] for t in task_ids if t in self.rows}

    async def search(self, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        found = sorted(
            (r for r in self.rows.values() if matches(r, query)),  # (tests: no exact-id path)
            key=lambda r: r.updated_at,
            reverse=True,
        )
        return found[query.offset : query.offset + query.limit], len(found)

    async def family(self, root_id: str, limit: int) -> list[HistoryRecord]:
        found = [r for r in self.rows.values() if root_id in (r.id, r.root_id, r.group_id)]
        return sorted(found, key=lambda r: r.seen_at)[:limit]

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows.values():
            out[r.state] = out.get(r.state, 0) + 1
        return out

    async def finished(self, since: float, width: float) -> list[Bucket]:
        rows = [(r.updated_at, r.state) for r in self.rows.values() if r.updated_at >= since]
        return fill_buckets(rows, since, width, time.time())

    async def prune(self, retention: Mapping[str, float], now: float, batch: int) -> int:
        gone = 0
        for state, keep in retention.items():
            old = [
                r.id for r in self.rows.values() if r.state == state and r.updated_at < now - keep
            ][:batch]
            for task_id in old:
                del self.rows[task_id]
            gone += len(old)
        return gone

    async def delete(self, task_ids: Sequence[str]) -> int:
        return sum(self.rows.pop(t, None) is not None for t in task_ids)

    async def clear(self) -> None:
        self.rows.clear()
        self.cursor = None

    async def get_cursor(self) -> str | None:
        return self.cursor

    async def put_cursor(self, cursor: str) -> None:
        self.cursor = cursor


def args_text(value: Any) -> str:
    """Arguments as JSON text for a record (repr for what JSON cannot hold), cut to MAX_TEXT."""
    text = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


__all__ = [
    "MAX_TEXT",
    "PRUNE_BATCH",
    "Bucket",
    "HasHistory",
    "HistoryQuery",
    "HistoryRecord",
    "HistoryStore",
    "MemoryHistoryStore",
    "args_text",
    "matches",
]
