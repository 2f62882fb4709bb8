"""The middleware seam. Async only; every hook has a no-op default, so override what you need.

Order: middleware run in the order given to `App(middleware=[...])`; `around_task` is an
onion (the first is outermost). Core semantics (retries, acks, canvas) never live here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiotask.app import App
    from aiotask.context import TaskContext
    from aiotask.protocol import Message


#: What `around_task` receives: call it to run the rest of the onion and the task.
CallNext = Callable[[], Awaitable[Any]]


class Middleware:
    """Subclass and override; instances are shared by every task of the app."""

    async def startup(self, app: App) -> None:
        """The worker is starting (before it consumes)."""

    async def shutdown(self, app: App) -> None:
        """The worker has stopped consuming and settled what it ran."""

    async def before_send(self, message: Message) -> Message:
        """Producer side, per message: return it (or `message.evolve(headers=...)`)."""
        return message

    async def around_task(self, ctx: TaskContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        """Worker side: wrap the task's execution; return (or transform) `await call_next()`."""
        return await call_next()


async def run_around(
    middleware: list[Middleware], ctx: TaskContext, call: Callable[[], Awaitable[Any]]
) -> Any:
    """Run `call` inside every middleware's `around_task`, the first outermost."""
    for mw in reversed(middleware):
        call = _bind(mw, ctx, call)
    return await call()


def _bind(
    mw: Middleware, ctx: TaskContext, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await mw.around_task(ctx, inner)

    return call
