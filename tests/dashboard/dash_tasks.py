"""Tasks the dashboard tests run on a real worker process (`-A proc_tasks:app`, a shim).

`make_app(**settings)` builds the same app in the test process, for the dashboard itself.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiotask import App
from aiotask.exceptions import Reject


def make_app(**settings: Any) -> App:
    # a periodic entry for the Schedules page (no beat runs in these tests: it never fires)
    nightly = {"task": "dash.add", "cron": "30 2 * * *", "args": [1, 2]}
    app = App("dash", beat_schedule={"nightly-sum": nightly}, **settings)

    @app.task(name="dash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="dash.echo")
    async def echo(value: object) -> object:
        return value

    @app.task(name="dash.slow")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"

    @app.task(name="dash.hold")
    async def hold(key: str) -> str:
        """Runs until the test writes the `release-KEY` file (at most 120 s): no timing guess."""
        gate = os.path.join(os.environ.get("TEST_LOG_DIR", "/nonexistent"), f"release-{key}")
        for _ in range(6000):
            if os.path.exists(gate):  # noqa: ASYNC240 - a test flag, one stat
                break
            await asyncio.sleep(0.02)
        return key

    @app.task(name="dash.boom")
    async def boom(message: str) -> None:
        raise ValueError(message)

    @app.task(name="dash.poison")
    async def poison(x: int) -> int:
        """Dead-lettered until the test writes the `allow` file, then runs."""
        allow = os.path.join(os.environ.get("TEST_LOG_DIR", "/nonexistent"), "allow")
        if not os.path.exists(allow):  # noqa: ASYNC240 - a test flag, one stat
            raise Reject(f"poison pill {x}")
        return x * 10

    return app


app = make_app()
