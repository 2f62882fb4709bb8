"""The waiter bookkeeping of backends whose `wait` is served by one background reader (SQLite's
poller, PostgreSQL's NOTIFY watcher): futures by task id, each removed by its own `wait` when
it ends (result, timeout or cancellation), resolved in bulk by the reader, failed in bulk when
the reader gives up or the backend closes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask.exceptions import BrokerConnectionError, ResultTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator


class Waiters:
    """Pending `wait` calls: task id -> the futures waiting for its encoded record."""

    def __init__(self) -> None:
        self._futures: dict[str, list[asyncio.Future[bytes]]] = {}

    def __bool__(self) -> bool:
        return bool(self._futures)

    def __len__(self) -> int:
        return len(self._futures)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._futures

    def __iter__(self) -> Iterator[str]:
        """The waited task ids (a snapshot: the reader awaits between uses)."""
        return iter(list(self._futures))

    async def wait(self, task_id: str, timeout: float | None, added: Callable[[], None]) -> bytes:
        """Register a future, call `added()` (wake or start the reader), and wait for it."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(task_id, []).append(fut)
        added()
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise ResultTimeout(
                f"task {task_id} not ready after {timeout}s; is a worker consuming its queue?"
            ) from None
        finally:
            futures = self._futures.get(task_id)
            if futures is not None and fut in futures:
                futures.remove(fut)
                if not futures:
                    del self._futures[task_id]

    def deliver(self, found: Iterable[tuple[str, bytes]]) -> bool:
        """Hand each (task id, record) to its waiters; True when there was any."""
        any_found = False
        for task_id, data in found:
            any_found = True
            for fut in self._futures.pop(task_id, []):
                if not fut.done():
                    fut.set_result(data)
        return any_found

    def fail(self, message: str) -> None:
        """Fail every pending wait with BrokerConnectionError(message), and forget them."""
        for futures in self._futures.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(BrokerConnectionError(message))
        self._futures.clear()
