"""The worker's eager task start (aiotask/worker/_eager.py) behaves as an asyncio Task would."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from aiotask.worker._eager import start

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")


async def test_a_task_that_never_waits_is_done_on_return() -> None:
    seen: list[object] = []

    async def body() -> int:
        seen.append(asyncio.current_task())
        var.set("inner")
        return 7

    caller = asyncio.current_task()
    task = start(body(), asyncio.get_running_loop())
    assert task.done() and task.result() == 7
    assert seen == [task]  # the step ran as the task's own, not the caller's
    assert asyncio.current_task() is caller  # and the caller is current again
    assert var.get() == "outer"  # in a copy of the context
    assert task not in asyncio.all_tasks()


async def test_a_task_that_waits_carries_on_and_keeps_its_identity() -> None:
    seen: list[object] = []

    async def body() -> str:
        seen.append(asyncio.current_task())
        var.set("inner")
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return var.get()

    task = start(body(), asyncio.get_running_loop())
    assert not task.done() and task in asyncio.all_tasks()
    assert await task == "inner"
    assert seen == [task, task]
    assert var.get() == "outer"


async def test_exceptions_and_cancellation_end_the_task_as_a_task() -> None:
    async def boom() -> None:
        raise ValueError("x")

    failed = start(boom(), asyncio.get_running_loop())
    assert isinstance(failed.exception(), ValueError)

    async def forever() -> None:
        await asyncio.sleep(3600)

    task = start(forever(), asyncio.get_running_loop())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_cancel_requested_in_the_first_step_cancels_the_task() -> None:
    """The written-out first step takes a returning coroutine's value only when no cancel
    was requested during the step; otherwise the Task ends cancelled, as asyncio's does."""

    async def returns() -> int:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        return 1

    task = start(returns(), asyncio.get_running_loop())
    assert task.cancelled()

    async def waits() -> int:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await asyncio.sleep(3600)
        return 1

    task = start(waits(), asyncio.get_running_loop())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_first_step_that_raises_or_yields_is_stepped_as_asyncio_steps_it() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    task = start(cancelled(), asyncio.get_running_loop())
    assert task.cancelled()

    async def bare_yield() -> str:
        await asyncio.sleep(0)  # a bare yield: asyncio schedules the next step
        return "again"

    coro = bare_yield()
    task = start(coro, asyncio.get_running_loop())
    assert task.get_coro() is coro and not task.done()
    assert await task == "again"


async def test_a_timeout_entered_in_the_first_step_cancels_this_task_only() -> None:
    async def limited() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(3600)
        except TimeoutError:
            return "timed out"
        return "not reached"

    task = start(limited(), asyncio.get_running_loop())
    assert await task == "timed out"
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_task_is_numbered_as_asyncio_numbers_tasks_when_asked() -> None:
    async def body() -> None:
        await asyncio.sleep(0)

    task = start(body(), asyncio.get_running_loop())
    assert task.get_name().startswith("Task-") and task.get_name() in repr(task)
    task.set_name("mine")
    assert task.get_name() == "mine"
    await task
