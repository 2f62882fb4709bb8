"""The batched emitter: events go to an in-memory buffer, a side loop flushes them.

Recording an event is a tuple appended to a list on the event loop (no await, no I/O, no
encoding on the task path); `run()` sends the buffer every FLUSH_INTERVAL seconds, or as soon
as MAX_BATCH are waiting: one JSON document (one `orjson.dumps`) per MAX_BATCH events, all in
one `emit_events` call. Two entries carry more than one event, so a task's three events cost
less to build, encode and send: the task-received events of one receive are one entry (the
consumer's list of (id, name, queue, other keys), as it is), and a task-succeeded recorded
while its task-started is still the last entry (the task ran without letting another task
record anything in between, e.g. it did not await) replaces that entry by one carrying both
timestamps. A follower expands them back (events/model.py): it sees every event, in order.

Events are best-effort: a failed flush is logged and dropped, and past MAX_BUFFER unsent
events new ones are dropped (and counted), so a broker outage never grows the worker's memory
or slows its tasks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson

from aiotask._event_types import TASK_STARTED, TASK_SUCCEEDED, EventType
from aiotask._log import get_logger
from aiotask.events.model import safe_message

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiotask.brokers.base import EventStream

log = get_logger(__name__)
_now = time.time

#: Seconds between two flushes of a non-empty buffer (how live a follower's view is). A
#: flush costs a Redis worker ~0.15 ms of CPU whatever its size: at 0.1 s, a worker draining
#: 2,000-3,000 no-op tasks/s (a loaded machine) paid ~0.5-0.7 us per task for it.
FLUSH_INTERVAL = 0.25
#: Events per record (one broker entry / message / row); a buffer this full is flushed at
#: once. Larger batches mean fewer flushes (each costs a Redis worker ~0.15-0.2 ms of CPU
#: beside ~1 us per task), but past ~128 KB a flush's buffers come fresh from the kernel
#: (page faults): 1,500 events of no-op tasks are ~95 KB in the compact form.
MAX_BATCH = 1500
#: Unsent events kept at most; newer ones are dropped while the broker does not take them.
MAX_BUFFER = 10_000
#: Seconds the last flush (at shutdown) may take.
FINAL_FLUSH_TIMEOUT = 5.0


#: (id, name, queue, other keys or None): one task of a received batch
Item = tuple[str, str, str, "dict[str, Any] | None"]
#: An entry of the buffer, encoded as it is (the compact form of events/model.py):
#: (type, timestamp, task id or "" for worker-*, task name, queue, runtime or None, other keys
#: or None[, the task-started timestamp]), or (type, timestamp, [Item, ...]) for a batch.
_Entry = tuple[Any, ...]


def producer_name() -> str:
    """The `hostname` of events a producer emits (task-sent): host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Emitter:
    """Buffers events for one emitter (`hostname`) and flushes them to `stream` in batches."""

    def __init__(
        self,
        stream: Callable[[], EventStream],
        hostname: str,
        *,
        interval: float = FLUSH_INTERVAL,
        max_batch: int = MAX_BATCH,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        #: the stream, looked up at the first flush (a worker creates its broker when it runs)
        #: and kept until a flush fails
        self._stream = stream
        self._sink: EventStream | None = None
        self.hostname = hostname
        self.interval = interval
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.buffer: list[_Entry] = []
        #: events in the buffer beyond one per entry (batches, started + succeeded pairs)
        self._more = 0
        self.dropped = 0
        self.sent = 0
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failing = False

    # -- recording (synchronous, on the event loop) -----------------------------------------

    @property
    def pending(self) -> int:
        """Events waiting in the buffer."""
        return len(self.buffer) + self._more

    def task(
        self,
        kind: str,
        task_id: str,
        name: str,
        queue: str,
        runtime: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A task-* event; `extra` holds the other per-type keys (retries, exception, ...).

        The hot path: a tuple appended to a list; it is encoded as it is, at flush."""
        buffer = self.buffer
        size = len(buffer) + self._more
        if size >= self.max_buffer:
            self.dropped += 1
            return
        buffer.append((kind, _now(), task_id, name, queue, runtime, extra))
        if size + 1 == self.max_batch:
            self._full.set()

    def succeeded(self, task_id: str, name: str, queue: str, runtime: float) -> None:
        """A plain task-succeeded (no other keys). When the task's task-started is the last
        entry (nothing was recorded since), that entry becomes one carrying both events: one
        tuple, and the task's fields once, instead of two."""
        buffer = self.buffer
        if buffer:
            last = buffer[-1]
            if last[2] == task_id and last[0] == TASK_STARTED:
                buffer[-1] = (TASK_SUCCEEDED, _now(), task_id, name, queue, runtime, None, last[1])
                self._more += 1
                if len(buffer) + self._more == self.max_batch:
                    self._full.set()
                return
        self.task(TASK_SUCCEEDED, task_id, name, queue, runtime)

    def tasks(self, kind: str, items: list[Item]) -> None:
        """Many task-* events of one kind at one instant (the messages of one receive): one
        entry holding `items` as they are (the caller does not change the list afterwards),
        one clock read. Items: (task id, name, queue, other keys or None)."""
        before = len(self.buffer) + self._more
        room = self.max_buffer - before
        if room < len(items):
            self.dropped += len(items) - max(room, 0)
            items = items[: max(room, 0)]
        if not items:  # an empty entry would count as an event
            return
        at, step = _now(), self.max_batch
        if len(items) <= step:
            self.buffer.append((kind, at, items))
        else:  # a record holds at most max_batch events
            self.buffer.extend((kind, at, items[i : i + step]) for i in range(0, len(items), step))
        self._more += len(items) - (len(items) + step - 1) // step
        if before < step <= before + len(items):
            self._full.set()

    def task_error(
        self,
        kind: str,
        task_id: str,
        name: str,
        queue: str,
        exc: BaseException,
        runtime: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """task-failed / task-retried: with the exception's type and redacted message."""
        fields = {"exception_type": type(exc).__name__, "exception": safe_message(exc)}
        if extra:
            fields.update(extra)
        self.task(kind, task_id, name, queue, runtime, fields)

    def worker(self, kind: str, fields: dict[str, Any]) -> None:
        """A worker-* event with its fields (pid, queues, active, processed, freq)."""
        self.task(kind, "", "", "", None, fields)

    # -- sending ------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Send what is buffered, MAX_BATCH per record, in one call; how many were sent."""
        async with self._lock:
            pending, self.buffer = self.buffer, []
            count, self._more = len(pending) + self._more, 0
            self._full.clear()
            if not pending:
                return 0
            if count <= self.max_batch:  # the usual case: one record
                records = [self._encode(pending)]
            else:
                records = [self._encode(chunk) for chunk in _chunks(pending, self.max_batch)]
            if not await self._send(records, count):
                return 0
        self.sent += count
        return count

    def _encode(self, batch: list[_Entry]) -> bytes:
        """One record for the batch, in the compact form (see events/model.py): the tuples as
        they are, in one orjson call (a tenth of the CPU of one object per event)."""
        return orjson.dumps({"hostname": self.hostname, "events": batch})

    async def _send(self, records: Sequence[bytes], count: int) -> bool:
        try:
            if self._sink is None:  # a Protocol isinstance check: not on every flush
                self._sink = self._stream()
            await self._sink.emit_events(records)
        except Exception as exc:
            self._sink = None
            if not self._failing:
                log.warning(
                    "could not emit %d events (dropped; the next flush tries again): %s",
                    count,
                    exc,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("emitting events again")
            self._failing = False
        if self.dropped:
            log.warning("dropped %d events while the broker did not take them", self.dropped)
            self.dropped = 0
        return True

    async def run(
        self,
        heartbeat: tuple[float, Callable[[], dict[str, Any]]] | None = None,
    ) -> None:
        """Flush forever: every `interval` (or at once when MAX_BATCH wait), and record a
        worker-heartbeat with `heartbeat[1]()`'s fields every `heartbeat[0]` seconds."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + heartbeat[0] if heartbeat else float("inf")
        while True:
            if not self._full.is_set():
                try:
                    async with asyncio.timeout(self.interval):
                        await self._full.wait()
                except TimeoutError:
                    pass
            if heartbeat is not None and loop.time() >= next_beat:
                next_beat = loop.time() + heartbeat[0]
                self.worker(EventType.WORKER_HEARTBEAT, {"freq": heartbeat[0], **heartbeat[1]()})
            if self.buffer:
                await self.flush()

    async def close(self) -> None:
        """The final flush (bounded by FINAL_FLUSH_TIMEOUT): what is left after is dropped."""
        try:
            async with asyncio.timeout(FINAL_FLUSH_TIMEOUT):
                await self.flush()
        except TimeoutError:
            log.warning("dropped %d events: the final flush timed out", self.pending)
            self.buffer.clear()
            self._more = 0


def _weight(entry: _Entry) -> int:
    """Events in one entry."""
    if len(entry) == 3:
        return len(entry[2])
    return 2 if len(entry) == 8 else 1


def _chunks(entries: list[_Entry], step: int) -> list[list[_Entry]]:
    """The entries cut into runs of at most `step` events (an entry is never split)."""
    out: list[list[_Entry]] = []
    chunk: list[_Entry] = []
    size = 0
    for entry in entries:
        weight = _weight(entry)
        if chunk and size + weight > step:
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(entry)
        size += weight
    if chunk:
        out.append(chunk)
    return out
