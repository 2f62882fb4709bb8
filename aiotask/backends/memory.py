"""An in-process result backend: dicts, with futures as waiters (no polling)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiotask._time import monotonic
from aiotask.backends._lock_memory import MemoryLockStore
from aiotask.backends.base import (
    DECIDED,
    SENT,
    EncodedResult,
    GroupProgress,
    MemberReport,
    ResultRecord,
    decode_record,
    group_step,
)
from aiotask.beat.store import MemoryScheduleStore
from aiotask.coordination.store import MemoryCoordinationStore
from aiotask.exceptions import ResultTimeout
from aiotask.history import MemoryHistoryStore
from aiotask.states import FAILURE, SUCCESS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence


@dataclass(slots=True)
class _Group:
    size: int
    body: bytes | None
    expires: float
    results: dict[int, EncodedResult] = field(default_factory=dict)
    #: UNDECIDED / DECIDED / SENT (see backends.base.group_step)
    fired: int = 0
    failed: int = 0


class MemoryBackend:
    """memory:// — one instance per App; results live as long as the process or their ttl."""

    def __init__(self) -> None:
        self._results: dict[str, tuple[EncodedResult, float]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._groups: dict[str, _Group] = {}
        self._revoked: dict[str, float] = {}
        self._listeners: set[asyncio.Queue[bytes]] = set()
        self._schedules: dict[str, MemoryScheduleStore] = {}
        self._histories: dict[str, MemoryHistoryStore] = {}
        self._locks = MemoryLockStore()
        self._coordination: dict[str, MemoryCoordinationStore] = {}
        self._workers: dict[str, tuple[bytes, float]] = {}
        self._replies: dict[str, tuple[list[bytes], asyncio.Event]] = {}

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _live(self, task_id: str) -> EncodedResult | None:
        item = self._results.get(task_id)
        if item is None:
            return None
        if item[1] <= monotonic():
            del self._results[task_id]
            return None
        return item[0]

    async def store(self, results: Sequence[EncodedResult]) -> None:
        for result in results:
            current = self._live(result.task_id)
            if current is not None and current.ready:
                continue  # first final writer wins
            self._results[result.task_id] = (result, monotonic() + result.ttl)
            if result.ready:
                for fut in self._waiters.pop(result.task_id, []):
                    if not fut.done():
                        fut.set_result(None)

    async def get(self, task_id: str) -> ResultRecord | None:
        result = self._live(task_id)
        return decode_record(result.data) if result is not None else None

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        return [await self.get(task_id) for task_id in task_ids]

    async def wait(self, task_id: str, timeout: float | None) -> ResultRecord:
        result = self._live(task_id)
        if result is None or not result.ready:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(fut)
            try:
                async with asyncio.timeout(timeout):
                    await fut
            except TimeoutError:
                raise ResultTimeout(
                    f"task {task_id} not ready after {timeout}s; is a worker consuming its queue?"
                ) from None
            finally:
                waiters = self._waiters.get(task_id)
                if waiters and fut in waiters:
                    waiters.remove(fut)
            result = self._live(task_id)
            assert result is not None  # noqa: S101 - set before the future resolves
        return decode_record(result.data)

    async def forget(self, task_ids: Sequence[str]) -> None:
        for task_id in task_ids:
            self._results.pop(task_id, None)

    async def open_group(self, group_id: str, size: int, body: bytes | None, ttl: float) -> None:
        if group_id not in self._groups:
            self._groups[group_id] = _Group(size, body, monotonic() + ttl)

    async def add_to_group(self, group_id: str, index: int, result: EncodedResult) -> GroupProgress:
        return (await self.add_to_groups([MemberReport(group_id, index, result)]))[0]

    async def add_to_groups(self, reports: Sequence[MemberReport]) -> list[GroupProgress]:
        return [self._report(r) for r in reports]

    def _report(self, report: MemberReport) -> GroupProgress:
        group = self._groups.get(report.group_id)
        if group is None or group.expires <= monotonic():
            return GroupProgress(size=0, done=0)
        new = report.index not in group.results
        if new:
            group.results[report.index] = report.result
        recorded = group.results[report.index]
        done = len(group.results)
        # only a complete group can fire: count successes then (a 1000-member chord stays linear)
        complete = done == group.size
        succeeded = sum(r.state == SUCCESS for r in group.results.values()) if complete else 0
        step, group.fired, group.failed = group_step(
            size=group.size,
            done=done,
            succeeded=succeeded,
            fired=group.fired,
            failed=group.failed,
            new=new,
            member_failed=recorded.state == FAILURE,
        )
        if step in ("fire", "fire_again"):
            records = [decode_record(group.results[i].data) for i in range(group.size)]
            again = step == "fire_again"
            return GroupProgress(
                group.size,
                done,
                fire=not again,
                fire_again=again,
                body=group.body,
                records=records,
            )
        if step in ("first_failure", "failure_again"):
            first = step == "first_failure"
            return GroupProgress(
                group.size, done, first_failure=first, failure_again=not first, body=group.body
            )
        return GroupProgress(group.size, done)

    async def groups_sent(self, group_ids: Sequence[str]) -> None:
        for group_id in group_ids:
            group = self._groups.get(group_id)
            if group is not None:
                group.fired = SENT if group.fired == DECIDED else group.fired
                group.failed = SENT if group.failed == DECIDED else group.failed

    async def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        deadline = monotonic() + ttl
        for task_id in task_ids:
            self._revoked[task_id] = deadline

    async def revocations(self) -> frozenset[str]:
        mono = monotonic()
        return frozenset(t for t, deadline in self._revoked.items() if deadline > mono)

    async def broadcast(self, payload: bytes) -> None:
        for queue in self._listeners:
            queue.put_nowait(payload)

    async def control(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._listeners.add(queue)
        if subscribed is not None:
            subscribed()
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    async def register_worker(self, name: str, record: bytes, ttl: float) -> None:
        self._workers[name] = (record, monotonic() + ttl)

    async def unregister_worker(self, name: str) -> None:
        self._workers.pop(name, None)

    async def workers(self) -> dict[str, bytes]:
        mono = monotonic()
        return {name: rec for name, (rec, deadline) in self._workers.items() if deadline > mono}

    def _reply_box(self, reply_to: str) -> tuple[list[bytes], asyncio.Event]:
        box = self._replies.get(reply_to)
        if box is None:
            box = self._replies[reply_to] = ([], asyncio.Event())
        return box

    async def reply(self, reply_to: str, payload: bytes, ttl: float) -> None:
        items, event = self._reply_box(reply_to)
        items.append(payload)
        event.set()
        asyncio.get_running_loop().call_later(ttl, self._replies.pop, reply_to, None)

    async def replies(self, reply_to: str, wait: float) -> list[bytes]:
        items, event = self._reply_box(reply_to)
        if not items:
            event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await event.wait()
        self._replies.pop(reply_to, None)  # taken: a later reply starts a new box
        return items

    def history_store(self, app_name: str) -> MemoryHistoryStore:
        return self._histories.setdefault(app_name, MemoryHistoryStore())

    def schedule_store(self, app_name: str) -> MemoryScheduleStore:
        return self._schedules.setdefault(app_name, MemoryScheduleStore())

    def lock_store(self) -> MemoryLockStore:
        return self._locks

    def coordination_store(self, app_name: str) -> MemoryCoordinationStore:
        return self._coordination.setdefault(app_name, MemoryCoordinationStore())
