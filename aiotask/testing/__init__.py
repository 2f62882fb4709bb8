"""Test helpers: run a worker on the current event loop for the duration of a block."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from aiotask.worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.app import App

__all__ = ["start_worker"]


@contextlib.asynccontextmanager
async def start_worker(app: App, **worker_options: Any) -> AsyncIterator[Worker]:
    """`async with start_worker(app) as worker:` — a real Worker (same code paths as the CLI)
    running as a task on this loop; warm-shut-down when the block exits."""
    worker = Worker(app, **worker_options)
    runner = asyncio.create_task(worker.run(), name="aiotask-test-worker")
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        ready.cancel()
        code = runner.result()
        raise RuntimeError(f"worker exited during startup with code {code} (see the log)")
    try:
        yield worker
    finally:
        worker.shutdown.request()
        await runner
