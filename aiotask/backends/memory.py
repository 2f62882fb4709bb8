"""An in-process result backend: dicts, with futures as waiters (no polling)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiotask._time import monotonic
from aiotask.backends.base import (
    EncodedResult,
    GroupProgress,
    ResultRecord,
    decode_record,
)
from aiotask.exceptions import ResultTimeout
from aiotask.states import FAILURE, SUCCESS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence


@dataclass(slots=True)
class _Group:
    size: int
    body: bytes | None
    expires: float
    results: dict[int, EncodedResult] = field(default_factory=dict)
    fired: bool = False
    failed: bool = False


class MemoryBackend:
    """memory:// — one instance per App; results live as long as the process or their ttl."""

    def __init__(self) -> None:
        self._results: dict[str, tuple[EncodedResult, float]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._groups: dict[str, _Group] = {}
        self._revoked: dict[str, float] = {}
        self._listeners: set[asyncio.Queue[bytes]] = set()

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
        group = self._groups.get(group_id)
        if group is None:
            return GroupProgress(size=0, done=0)
        if index not in group.results:
            group.results[index] = result
        done = len(group.results)
        first_failure = result.state == FAILURE and not group.failed
        if first_failure:
            group.failed = True
            return GroupProgress(group.size, done, first_failure=True, body=group.body)
        complete = done == group.size and not group.fired and not group.failed
        if complete and all(r.state == SUCCESS for r in group.results.values()):
            group.fired = True
            records = [decode_record(group.results[i].data) for i in range(group.size)]
            return GroupProgress(group.size, done, fire=True, body=group.body, records=records)
        return GroupProgress(group.size, done)

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

    async def control(self) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)
