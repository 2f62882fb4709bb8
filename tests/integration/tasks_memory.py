"""Tasks for the in-process end-to-end tests (importable, so pool children can load them)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiotask import App, Task, TaskContext
from aiotask.exceptions import Reject, SoftTimeLimitExceeded

app = App("e2e", broker="memory://", backend="memory://", shutdown_grace=5.0)
calls: dict[str, int] = {}
events: list[str] = []
gates: dict[str, asyncio.Event] = {}


class Flaky(Exception):
    pass


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="e2e.fail")
async def fail(message: str) -> None:
    raise Flaky(message)


@app.task(bind=True, max_retries=5, default_retry_delay=0.01)
async def retry_until(ctx: TaskContext, key: str, succeed_on: int) -> int:
    calls[key] = calls.get(key, 0) + 1
    if ctx.retries + 1 < succeed_on:
        raise ctx.retry(exc=Flaky(f"attempt {ctx.retries}"), countdown=0.01)
    return ctx.retries


@app.task(autoretry_for=(Flaky,), max_retries=2, retry_backoff=0.01, retry_jitter=False)
async def always_flaky(key: str) -> None:
    calls[key] = calls.get(key, 0) + 1
    raise Flaky(f"call {calls[key]}")


@app.task(bind=True)
async def introspect(ctx: TaskContext, x: int) -> dict[str, Any]:
    await ctx.update_state("PROGRESS", {"done": x})
    await asyncio.sleep(0.2)
    return {"id": ctx.id, "retries": ctx.retries, "args": ctx.args, "root": ctx.root_id}


@app.task
async def sleeper(seconds: float, key: str = "") -> str:
    await asyncio.sleep(seconds)
    if key:
        calls[key] = calls.get(key, 0) + 1
    return "slept"


@app.task
async def hold(key: str) -> str:
    """Runs until the test calls release(key): surely still running when the test acts on it,
    and no longer than the test needs (no task length to guess)."""
    await gates.setdefault(key, asyncio.Event()).wait()
    calls[key] = calls.get(key, 0) + 1
    return "released"


def release(*keys: str) -> None:
    """Let the `hold(key)` tasks finish (at once, when they run later)."""
    for key in keys:
        gates.setdefault(key, asyncio.Event()).set()


@app.task(time_limit=0.2)
async def too_slow() -> None:
    await asyncio.sleep(5)


@app.task
async def unencodable_result() -> object:
    return object()


@app.task
async def rejecter(requeue: bool) -> None:
    raise Reject("not today", requeue=requeue)


@app.task
def pid_of_child(x: int) -> dict[str, int]:
    return {"pid": os.getpid(), "x": x * 2}


@app.task
def sync_fail() -> None:
    raise KeyError("missing")


class Hooked(Task[Any, Any]):
    async def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        events.append(f"success:{retval}")

    async def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        events.append(f"failure:{type(exc).__name__}")

    async def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        events.append("retry")

    async def after_return(
        self, status: Any, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: str | None
    ) -> None:
        events.append(f"after:{status}")


@app.task(base=Hooked, autoretry_for=(Flaky,), max_retries=1, default_retry_delay=0.01)
async def hooked(fail_with: str | None) -> str:
    if fail_with:
        raise Flaky(fail_with)
    return "ok"


@app.task(rate_limit="5/s")
async def throttled(i: int) -> int:
    return i


@app.task(soft_time_limit=0.2, time_limit=2)
async def soft_limited() -> str:
    try:
        await asyncio.sleep(5)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.01)  # cleanup may still await
        return "cleaned up"
    return "not reached"


order: list[int] = []


@app.task
async def note(priority: int) -> None:
    order.append(priority)
