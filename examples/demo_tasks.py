"""The demo's tasks, imported by the worker (-A examples.demo_tasks:app) and the producer."""

from __future__ import annotations

import asyncio
import os

from aiotask import App, TaskContext

# No URL: the embedded default (a SQLite file), so no server is needed.
# The demo sets AIOTASK_BROKER_URL to keep its file in a temporary directory.
app = App("demo")


@app.task
async def add(x: int, y: int) -> int:
    """A coroutine task: runs on the worker's event loop."""
    await asyncio.sleep(0.01)
    return x + y


@app.task
def fib(n: int) -> dict[str, int]:
    """A plain function: runs in the worker's process pool."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return {"n": n, "fib": a, "pid": os.getpid()}


@app.task
async def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
async def flaky(ctx: TaskContext, succeed_on: int) -> str:
    """Fails until its attempt number reaches `succeed_on`, to show retries."""
    if ctx.retries + 1 < succeed_on:
        raise ctx.retry(exc=ConnectionError(f"attempt {ctx.retries + 1} failed"))
    return f"succeeded on attempt {ctx.retries + 1}"


@app.task
async def broken(message: str) -> None:
    raise ValueError(message)
