"""Tasks the chaos workers run. Each execution appends its task id to a ledger file.

The ledger lives outside aiotask (one O_APPEND write per finished execution: atomic for a short
line, and it survives kill -9 of the worker because it is in the kernel once written), so the
harness counts executions without trusting the system under test.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from aiotask import App

if TYPE_CHECKING:
    from aiotask.context import TaskContext

LEDGER_ENV = "CHAOS_LEDGER"


def record(task_id: str) -> None:
    """Append one line to the ledger: this task's body ran to its end once more."""
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)


def make_app(**settings: Any) -> App:
    """The chaos app; a worker builds it from AIOTASK_* variables, the producer with keywords."""
    app = App("chaos", **settings)

    @app.task(name="chaos.work", bind=True)
    async def work(ctx: TaskContext, value: int, ms: int) -> int:
        await asyncio.sleep(ms / 1000)
        record(ctx.id)
        return value

    @app.task(name="chaos.add", bind=True)
    async def add(ctx: TaskContext, x: int, y: int) -> int:
        await asyncio.sleep(0.005)
        record(ctx.id)
        return x + y

    @app.task(name="chaos.tsum", bind=True)
    async def tsum(ctx: TaskContext, values: list[int]) -> int:
        record(ctx.id)
        return sum(values)

    @app.task(name="chaos.probe")
    async def probe() -> int:
        return os.getpid()

    return app


app = make_app() if LEDGER_ENV in os.environ else None
