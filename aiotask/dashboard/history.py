"""Task history: events folded into one row per task, kept in the store.

The dashboard follows `aiotask.events.follow(app)` in one background task and hands the
events to a writer, which folds each batch into rows and writes the changed rows to the
result backend's `HistoryStore` (aiotask/history.py) in one call: so a dashboard started again
(or a second one) reads what was seen before, and the task list and search query the store,
not this process. A pruner deletes rows past `history_retention` per state, in batches.

The follower starts from the stream position saved with the history (`get_cursor`): what was
emitted while no dashboard ran is folded in at start (as far as the capped stream still keeps
it; RabbitMQ's exchange keeps nothing), and the writer saves the position of the last record
it wrote (`put_cursor`, after the rows: a crash in between folds a few events twice).

The newest `size` rows are also kept in memory, to fold the next events of a task without a
read; a task not there is read from the store first (one read per batch). Each change is fanned
out to the live pages' SSE subscribers. Without a result backend the history is this
process's memory only (the pages say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiotask._log import get_logger
from aiotask.events import EventType, TaskEvent, WorkerEvent, follow_after
from aiotask.exceptions import ConfigurationError
from aiotask.history import (
    PRUNE_BATCH,
    HasHistory,
    HistoryQuery,
    HistoryRecord,
    MemoryHistoryStore,
    args_text,
)
from aiotask.states import FAILURE, PENDING, RETRY, REVOKED, STARTED, SUCCESS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiotask.app import App
    from aiotask.events import Event
    from aiotask.history import HistoryStore

log = get_logger(__name__)

#: Display states the result backend does not store (seen only in events).
RECEIVED = "RECEIVED"
REJECTED = "REJECTED"
#: Every state the pages filter by.
STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, REJECTED)
#: Tasks kept in memory to fold events without a read (the oldest is dropped first).
DEFAULT_SIZE = 10_000
#: Changes queued per live page; a page that falls further behind misses some (it reloads).
SUBSCRIBER_BUFFER = 1_000
#: Seconds between attempts to follow the stream (or reach the store) again after a failure.
RETRY_DELAY = 2.0
#: Events folded and written per store call at most.
WRITE_BATCH = 2_000
#: Events waiting for the writer at most (past it the follower waits: back-pressure).
PENDING_EVENTS = 50_000
#: Seconds between two pruning rounds.
PRUNE_INTERVAL = 60.0
#: Batches one pruning round deletes at most (the rest waits for the next round).
PRUNE_ROUNDS = 100

STATE_OF: dict[str, str] = {  # event type -> the state it shows
    EventType.TASK_SENT: str(PENDING),
    EventType.TASK_RECEIVED: RECEIVED,
    EventType.TASK_STARTED: str(STARTED),
    EventType.TASK_SUCCEEDED: str(SUCCESS),
    EventType.TASK_FAILED: str(FAILURE),
    EventType.TASK_RETRIED: str(RETRY),
    EventType.TASK_REVOKED: str(REVOKED),
    EventType.TASK_REJECTED: REJECTED,
}
#: A later event never moves a task back to an earlier state (events of one task may come
#: from a producer and a worker, in any order).
RANK: dict[str, int] = {PENDING: 0, RECEIVED: 1, STARTED: 2, RETRY: 3, REJECTED: 3}
#: States after which the same task id may run again: retried, or dead-lettered and replayed.
AGAIN = frozenset({RETRY, REJECTED})
FINAL_RANK = 9
#: Entries of a task's timeline kept (retries and replays add some).
MAX_TIMELINE = 50


@dataclass(slots=True)
class TaskRow:
    """What the dashboard knows about one task, while it folds events into it."""

    id: str
    name: str
    state: str = str(PENDING)
    queue: str = ""
    worker: str = ""
    seen_at: float = 0.0
    updated_at: float = 0.0
    runtime: float | None = None
    retries: int = 0
    exception_type: str | None = None
    exception: str | None = None
    #: when it was last retried or dead-lettered (older events of it are stale)
    again_at: float = 0.0
    args: str | None = None
    kwargs: str | None = None
    exact_args: bool = False
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    #: (event type, unix seconds, who emitted it)
    timeline: list[tuple[str, float, str]] = field(default_factory=list)

    def record(self) -> HistoryRecord:
        return HistoryRecord(
            id=self.id,
            name=self.name,
            state=self.state,
            queue=self.queue,
            worker=self.worker,
            seen_at=self.seen_at,
            updated_at=self.updated_at,
            runtime=self.runtime,
            retries=self.retries,
            exception_type=self.exception_type,
            exception=self.exception,
            args=self.args,
            kwargs=self.kwargs,
            exact_args=self.exact_args,
            root_id=self.root_id,
            parent_id=self.parent_id,
            group_id=self.group_id,
            timeline=tuple(self.timeline[-MAX_TIMELINE:]),
        )

    @classmethod
    def of(cls, r: HistoryRecord) -> TaskRow:
        row = cls(r.id, r.name, r.state, r.queue, r.worker, r.seen_at, r.updated_at)
        row.runtime, row.retries = r.runtime, r.retries
        row.exception_type, row.exception = r.exception_type, r.exception
        row.args, row.kwargs, row.exact_args = r.args, r.kwargs, r.exact_args
        row.root_id, row.parent_id, row.group_id = r.root_id, r.parent_id, r.group_id
        row.timeline = [tuple(t) for t in r.timeline]  # type: ignore[misc]
        if row.state in AGAIN and row.timeline:
            row.again_at = row.timeline[-1][1]
        return row


def record_dict(r: HistoryRecord, *, full: bool = False) -> dict[str, Any]:
    """A record as the HTTP API shows it."""
    out: dict[str, Any] = {
        "id": r.id,
        "task": r.name,
        "state": r.state,
        "queue": r.queue,
        "worker": r.worker,
        "seen_at": r.seen_at,
        "updated_at": r.updated_at,
        "runtime": r.runtime,
        "retries": r.retries,
        "exception_type": r.exception_type,
        "exception": r.exception,
        "root_id": r.root_id,
        "parent_id": r.parent_id,
        "group_id": r.group_id,
    }
    if full:
        out["args"] = r.args
        out["kwargs"] = r.kwargs
        out["timeline"] = [{"type": t, "timestamp": ts, "hostname": h} for t, ts, h in r.timeline]
    return out


def _rank(state: str) -> int:
    return RANK.get(state, FINAL_RANK)


def _next_state(row: TaskRow, event: TaskEvent) -> str:
    """Events of one task come from a producer and workers, not always in order: a state
    never goes back (a late task-started after task-succeeded changes nothing), the first
    outcome stays, and after a retry or a dead-lettering (it may be replayed) the next
    attempt's events, newer than that, count."""
    new = STATE_OF.get(event.type, row.state)
    if _rank(row.state) == FINAL_RANK:
        return row.state
    if new in AGAIN:
        row.again_at = event.timestamp
        return new
    if row.state in AGAIN:
        return new if event.timestamp >= row.again_at else row.state
    return new if _rank(new) >= _rank(row.state) else row.state


class History:
    """Rows folded from events, written to the store; see the module docstring."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ConfigurationError(f"history size must be at least 1, got {size!r}")
        self.size = size
        #: the newest rows folded here (the store has them all)
        self.rows: OrderedDict[str, TaskRow] = OrderedDict()
        #: ids changed since the last write
        self.dirty: set[str] = set()
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        #: why the stream is not followed (no event stream, broker down), for the pages
        self.problem: str | None = None
        #: why the history is not in the store (no result backend), for the pages
        self.store_note: str | None = None
        #: set while the stream is followed (from the saved position, where the broker keeps
        #: positions; else from then on)
        self.following = asyncio.Event()
        self._store: HistoryStore | None = None
        #: events, and after each record's events its stream position (a str) to save
        self._pending: asyncio.Queue[Event | str] = asyncio.Queue(PENDING_EVENTS)
        #: the position of the last record queued (where to follow from after a failure)
        self.cursor: str | None = None
        #: set when the writer has written everything queued before it was cleared
        self.idle = asyncio.Event()
        self.idle.set()

    # -- the store ------------------------------------------------------------------------

    def use(self, store: HistoryStore) -> None:
        """Write to and read from `store` (create_app's caller may give one; tests do)."""
        self._store = store

    async def store(self, app: App) -> HistoryStore:
        """The app's history store: the result backend's, else this process's memory."""
        if self._store is None:
            try:
                backend = await app.result_backend()
            except ConfigurationError as exc:
                backend, self.store_note = None, f"history kept in memory only: {exc}"
            if isinstance(backend, HasHistory):
                self._store = backend.history_store(app.main)
            else:
                if backend is not None:
                    self.store_note = (
                        f"history kept in memory only: {type(backend).__name__} keeps none"
                    )
                self._store = MemoryHistoryStore()
        return self._store

    async def search(self, app: App, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        return await (await self.store(app)).search(query)

    async def get(self, app: App, task_id: str) -> HistoryRecord | None:
        row = self.rows.get(task_id)
        if row is not None:
            return row.record()
        return (await (await self.store(app)).get_many([task_id])).get(task_id)

    async def delete(self, app: App, task_ids: list[str]) -> int:
        """Drop these rows here and in the store (a bulk delete); how many the store had."""
        for task_id in task_ids:
            self.rows.pop(task_id, None)
            self.dirty.discard(task_id)
        return await (await self.store(app)).delete(task_ids)

    async def sent(
        self, app: App, task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        """A task this dashboard sent: its exact arguments, written at once."""
        row = self._row(task_id, name, time.time())
        row.args, row.kwargs, row.exact_args = args_text(args), args_text(kwargs), True
        self.dirty.discard(task_id)
        await (await self.store(app)).put([row.record()])

    # -- folding ----------------------------------------------------------------------------

    def _row(self, task_id: str, name: str, at: float) -> TaskRow:
        row = self.rows.get(task_id)
        if row is None:
            # (rows past `size` go in `fold`, once written)
            row = self.rows[task_id] = TaskRow(task_id, name, seen_at=at, updated_at=at)
        else:
            self.rows.move_to_end(task_id)
            if name and not row.name:
                row.name = name
        return row

    def apply(self, event: Event) -> None:
        """Fold one event into its row (written by the next `write`) and tell the pages."""
        if isinstance(event, WorkerEvent):
            self._publish({"kind": "worker", "type": str(event.type), "worker": event.hostname})
            return
        if not isinstance(event, TaskEvent) or not event.task_id:
            return
        row = self._row(event.task_id, event.task, event.timestamp)
        row.timeline.append((str(event.type), event.timestamp, event.hostname))
        del row.timeline[:-MAX_TIMELINE]
        row.updated_at = max(row.updated_at, event.timestamp)
        row.queue = row.queue or event.queue
        if event.type != EventType.TASK_SENT:
            row.worker = event.hostname
        if event.runtime is not None:
            row.runtime = event.runtime
        if event.retries is not None:
            row.retries = event.retries
        if event.exception_type is not None:
            row.exception_type, row.exception = event.exception_type, event.exception
        if event.args is not None and not row.exact_args:
            row.args, row.kwargs = event.args, event.kwargs
        row.root_id = row.root_id or event.root_id
        row.parent_id = row.parent_id or event.parent_id
        row.group_id = row.group_id or event.group_id
        row.state = _next_state(row, event)
        self.dirty.add(row.id)
        if self.subscribers:  # (building the change costs more than folding the event)
            change = {"kind": "task", **record_dict(row.record()), "event": str(event.type)}
            self._publish(change)

    async def fold(self, store: HistoryStore, events: list[Event]) -> int:
        """Fold a batch: rows not in memory are read from the store first (one read), the
        changed rows written after (one write). How many rows were written."""
        missing = {
            e.task_id
            for e in events
            if isinstance(e, TaskEvent) and e.task_id and e.task_id not in self.rows
        }
        if missing:
            for record in (await store.get_many(sorted(missing))).values():
                self.rows[record.id] = TaskRow.of(record)
        for event in events:
            self.apply(event)
        changed = [self.rows[t].record() for t in self.dirty if t in self.rows]
        await store.put(changed)
        self.dirty.clear()
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return len(changed)

    def _publish(self, change: dict[str, Any]) -> None:
        for queue in self.subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(change)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        """A queue of changes for one live page, removed when the page goes away."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)

    # -- the background tasks -------------------------------------------------------------

    async def run(self, app: App) -> None:
        """Follow the app's events, write them, and prune, until cancelled."""
        while True:
            try:
                store = await self.store(app)
                break
            except Exception as exc:  # the backend is down: the pages say so, retry
                self.problem = f"the history store is unreachable ({exc}); retrying"
                await asyncio.sleep(RETRY_DELAY)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_loop(store), name="aiotask-dashboard-history-writer")
            tg.create_task(
                self._prune_loop(store, app.conf.history_retention),
                name="aiotask-dashboard-history-pruner",
            )
            await self._follow(app, store)

    async def _follow(self, app: App, store: HistoryStore) -> None:
        while True:
            try:
                if self.cursor is None:
                    self.cursor = await store.get_cursor()
                    log.info(
                        "dashboard: following events after position %s",
                        self.cursor or "(none saved)",
                    )
                async with follow_after(app, self.cursor) as records:
                    self.problem = None
                    self.following.set()
                    async for position, events in records:
                        self.idle.clear()
                        for event in events:
                            await self._pending.put(event)
                        if position is not None:
                            self.cursor = position
                            await self._pending.put(position)
            except ConfigurationError as exc:
                self.following.clear()
                self.problem = str(exc)
                log.warning("dashboard: no live task history: %s", exc)
                return
            except Exception as exc:
                self.following.clear()
                self.problem = f"following events failed ({exc}); retrying"
                log.warning("dashboard: following events failed, retrying: %s", exc)
            await asyncio.sleep(RETRY_DELAY)

    async def _write_loop(self, store: HistoryStore) -> None:
        batch: list[Event | str] = []
        while True:
            if not batch:
                if self._pending.empty():
                    self.idle.set()
                batch.append(await self._pending.get())
            while len(batch) < WRITE_BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            events = [e for e in batch if not isinstance(e, str)]
            positions = [e for e in batch if isinstance(e, str)]
            try:
                if events:
                    await self.fold(store, events)
                    events = []
                if positions:
                    await store.put_cursor(positions[-1])
            except Exception as exc:  # the store is down: keep what is unwritten, try again
                log.warning("dashboard: writing task history failed, retrying: %s", exc)
                batch = [*events, *positions[-1:]]
                await asyncio.sleep(RETRY_DELAY)
                continue
            batch = []

    async def _prune_loop(self, store: HistoryStore, retention: Mapping[str, float]) -> None:
        while True:
            try:
                await prune(store, retention, time.time())
            except Exception as exc:
                log.warning("dashboard: pruning task history failed: %s", exc)
            await asyncio.sleep(PRUNE_INTERVAL)


async def prune(store: HistoryStore, retention: Mapping[str, float], at: float) -> int:
    """Delete what `retention` lets go, PRUNE_BATCH per state per call, up to PRUNE_ROUNDS
    calls (short transactions: the workers writing beside it are never held up for long)."""
    total = 0
    for _ in range(PRUNE_ROUNDS):
        gone = await store.prune(retention, at, PRUNE_BATCH)
        total += gone
        if gone < PRUNE_BATCH:
            break
    if total:
        log.info("dashboard: pruned %d task history rows past history_retention", total)
    return total
