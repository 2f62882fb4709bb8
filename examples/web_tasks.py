"""Tasks shared by the web examples (FastAPI, Flask) and the plain script.

The worker: `aiotask worker -A examples.web_tasks:app` (from the repository root). With no URL
the App uses AIOTASK_BROKER_URL, else the embedded SQLite file `aiotask.db`; results are kept
in the same place.
"""

from __future__ import annotations

import asyncio

from aiotask import App

app = App("examples")


@app.task(name="examples.add")
async def add(x: int, y: int) -> int:
    """A coroutine task: runs on the worker's event loop."""
    await asyncio.sleep(0.01)
    return x + y


@app.task(name="examples.slow")
async def slow(seconds: float) -> str:
    """Something to revoke before it runs."""
    await asyncio.sleep(seconds)
    return "done"
