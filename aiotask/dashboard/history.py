"""Recent tasks, built from the event stream (and from what the dashboard itself sent).

The dashboard follows `aiotask.events.follow(app)` in one background task, keeps the newest
`size` tasks in memory (oldest dropped first), and fans each change out to the live pages'
SSE subscribers. Events carry no arguments, so args/kwargs are known for tasks sent through
the dashboard's own API; the result and traceback come from the result backend on the task
page. History is this process's memory: it starts empty at each dashboard start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import orjson

from aiotask._log import get_logger
from aiotask.events import EventType, TaskEvent, WorkerEvent, follow
from aiotask.exceptions import ConfigurationError
from aiotask.states import FAILURE, PENDING, RETRY, REVOKED, STARTED, SUCCESS

if TYPE_CHECKING:
    from aiotask.app import App
    from aiotask.events import Event

log = get_logger(__name__)

#: Display states the result backend does not store (seen only in events).
RECEIVED = "RECEIVED"
REJECTED = "REJECTED"
#: Every state the pages filter by.
STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, REJECTED)
#: Characters of arguments and of error text kept per task for searching.
MAX_TEXT = 2_000
#: Tasks kept in memory (the oldest is dropped first).
DEFAULT_SIZE = 10_000
#: Changes queued per live page; a page that falls further behind misses some (it reloads).
SUBSCRIBER_BUFFER = 1_000
#: Seconds between attempts to follow the stream again after it failed.
RETRY_DELAY = 2.0

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


@dataclass(slots=True)
class TaskRow:
    """What the dashboard knows about one task."""

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
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    #: lower-case arguments (JSON) and error text, what a search by content looks in
    text: str = ""
    #: (event type, unix seconds, who emitted it)
    timeline: list[tuple[str, float, str]] = field(default_factory=list)

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "task": self.name,
            "state": self.state,
            "queue": self.queue,
            "worker": self.worker,
            "seen_at": self.seen_at,
            "updated_at": self.updated_at,
            "runtime": self.runtime,
            "retries": self.retries,
            "exception_type": self.exception_type,
            "exception": self.exception,
        }
        if full:
            out["args"] = self.args
            out["kwargs"] = self.kwargs
            out["timeline"] = [
                {"type": t, "timestamp": ts, "hostname": h} for t, ts, h in self.timeline
            ]
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
    """The newest tasks by id, kept up to date from events; see the module docstring."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ConfigurationError(f"history size must be at least 1, got {size!r}")
        self.size = size
        self.rows: OrderedDict[str, TaskRow] = OrderedDict()
        #: rows per state, kept as rows change (the overview reads it on every refresh)
        self.counts: Counter[str] = Counter()
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        #: why the stream is not followed (no event stream, broker down), for the pages
        self.problem: str | None = None
        #: set while the stream is followed (events before it are not seen)
        self.following = asyncio.Event()

    def _row(self, task_id: str, name: str, at: float) -> TaskRow:
        row = self.rows.get(task_id)
        if row is None:
            row = self.rows[task_id] = TaskRow(task_id, name, seen_at=at, updated_at=at)
            self.counts[row.state] += 1
            while len(self.rows) > self.size:
                _, gone = self.rows.popitem(last=False)
                self.counts[gone.state] -= 1
        elif name and not row.name:
            row.name = name
        return row

    def sent(
        self, task_id: str, name: str, args: list[Any], kwargs: dict[str, Any], at: float
    ) -> None:
        """A task this dashboard sent: the only place its arguments are known."""
        row = self._row(task_id, name, at)
        row.args, row.kwargs = args, kwargs
        encoded = orjson.dumps([args, kwargs], default=repr, option=orjson.OPT_NON_STR_KEYS)
        row.text += encoded.decode().lower()[:MAX_TEXT] + "\n"

    def apply(self, event: Event) -> None:
        """Fold one event into the rows and tell the live pages."""
        if isinstance(event, WorkerEvent):
            self._publish({"kind": "worker", "type": str(event.type), "worker": event.hostname})
            return
        if not isinstance(event, TaskEvent) or not event.task_id:
            return
        row = self._row(event.task_id, event.task, event.timestamp)
        row.timeline.append((str(event.type), event.timestamp, event.hostname))
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
            row.text += f"{event.exception_type}: {event.exception or ''}".lower()[:MAX_TEXT] + "\n"
        new = _next_state(row, event)
        if new != row.state:
            self.counts[row.state] -= 1
            self.counts[new] += 1
            row.state = new
        self._publish({"kind": "task", **row.to_dict(), "event": str(event.type)})

    def _publish(self, change: dict[str, Any]) -> None:
        for queue in self.subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(change)

    def search(
        self,
        *,
        q: str = "",
        state: str = "",
        name: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[TaskRow], int]:
        """Newest first, `limit` rows from `offset`, and how many match in all. `q` matches an
        id (exactly, or as a prefix), or is a substring (any case) of the name, the error
        (type and message) or the arguments (JSON; known for tasks sent here).

        Unfiltered, only the rows shown are visited; a filter visits every row once."""
        needle = q.strip()
        newest = reversed(self.rows.values())
        if not (needle or state or name):
            return list(islice(newest, offset, offset + limit)), len(self.rows)
        exact = self.rows.get(needle) if needle else None
        if exact is not None and self._fits(exact, "", state, name):
            return ([exact] if offset == 0 else []), 1
        lowered = needle.lower()
        shown: list[TaskRow] = []
        total = 0
        for row in newest:
            if self._fits(row, lowered, state, name):
                if offset <= total < offset + limit:
                    shown.append(row)
                total += 1
        return shown, total

    @staticmethod
    def _fits(row: TaskRow, needle: str, state: str, name: str) -> bool:
        if state and row.state != state:
            return False
        if name and row.name != name:
            return False
        return (
            not needle
            or row.id.startswith(needle)
            or needle in row.name.lower()
            or needle in row.text
        )

    def get(self, task_id: str) -> TaskRow | None:
        return self.rows.get(task_id)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        """A queue of changes for one live page, removed when the page goes away."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)

    async def run(self, app: App) -> None:
        """Follow the app's events until cancelled, reconnecting after a failure."""
        while True:
            try:
                async with follow(app) as events:
                    self.problem = None
                    self.following.set()
                    async for event in events:
                        self.apply(event)
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
