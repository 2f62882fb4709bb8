"""Caller-side API edges end to end, through a real Worker on the memory broker."""

from __future__ import annotations

import sys

import pytest

from aiotask import App
from aiotask.exceptions import TaskError
from aiotask.testing import start_worker

app = App("api-e2e", broker="memory://", backend="memory://", shutdown_grace=5.0)
TIMEOUT = 30


@app.task
async def exits_async(code: int) -> None:
    sys.exit(code)


@app.task
def exits_in_pool(code: int) -> None:
    sys.exit(code)


@app.task
async def still_alive() -> str:
    return "alive"


@pytest.fixture(autouse=True)
async def fresh_app() -> None:
    await app.close()
    app._broker = app._backend = None


@pytest.mark.parametrize("task", [exits_async, exits_in_pool], ids=["coroutine", "process"])
async def test_sys_exit_in_a_task_is_a_task_error_for_the_caller(task: object) -> None:
    assert task is exits_async or task is exits_in_pool
    async with app, start_worker(app, processes=1):
        r = await task.send(3)
        with pytest.raises(TaskError) as info:
            await r.get(timeout=TIMEOUT)
        assert info.value.remote_type == "builtins.SystemExit"
        assert str(info.value) == "SystemExit: 3"
        # the worker survived the task's exit and still runs the next one
        assert await (await still_alive.send()).get(timeout=TIMEOUT) == "alive"
