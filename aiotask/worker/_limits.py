"""Time limits for coroutine tasks: a soft limit raises inside the task, at an await.

asyncio can only cancel a task; it cannot throw a chosen exception into it. The task's
coroutine is therefore wrapped in an awaitable that, when the soft limit has fired, turns the
one CancelledError it caused into SoftTimeLimitExceeded for the task's code, and withdraws that
cancellation request from the asyncio task so the rest of the task runs normally.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiotask.exceptions import SoftTimeLimitExceeded

if TYPE_CHECKING:
    from collections.abc import Coroutine, Generator


class SoftLimited:
    """`await SoftLimited(coro, seconds, name)`: coro sees SoftTimeLimitExceeded after `seconds`."""

    def __init__(self, coro: Coroutine[Any, Any, Any], seconds: float, name: str) -> None:
        self._coro = coro
        self._seconds = seconds
        self._name = name
        self._fired = False

    def __await__(self) -> Generator[Any, None, Any]:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - awaited inside a task
        handle = asyncio.get_running_loop().call_later(self._seconds, self._fire, task)
        try:
            return (yield from self._drive(task))
        finally:
            handle.cancel()

    def _fire(self, task: asyncio.Task[Any]) -> None:
        self._fired = True
        task.cancel(msg=f"aiotask soft time limit of {self._seconds}s")

    def _drive(self, task: asyncio.Task[Any]) -> Generator[Any, None, Any]:
        coro, value = self._coro, None
        error: BaseException | None = None
        while True:
            try:
                yielded = coro.throw(error) if error is not None else coro.send(value)
            except StopIteration as stop:
                return stop.value
            error = value = None
            try:
                value = yield yielded
            except asyncio.CancelledError as exc:
                if self._fired:  # ours: deliver the soft limit instead, once
                    self._fired = False
                    task.uncancel()
                    error = SoftTimeLimitExceeded(
                        f"task {self._name} passed its soft time limit of {self._seconds}s"
                    )
                else:
                    error = exc
            except BaseException as exc:
                error = exc
