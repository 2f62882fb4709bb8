"""Run-time schedule changes reach a running beat through the control channel, within a second."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.beat.runner import Beat
from tests.contract.conftest import delete_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(params=["sqlite", "redis"])
async def app(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[App]:
    url = request.getfixturevalue(f"{request.param}_url")
    a = App("changes", broker=url, key_prefix=namespace)

    @a.task(name="changes.tick")
    async def tick() -> None:
        return None

    async with a:
        yield a
    if request.param == "redis":
        await delete_prefix(url, namespace)


async def _until(check: object, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError("the running beat did not see the change in time")


async def test_add_pause_resume_remove_reach_a_running_beat(app: App) -> None:
    store = (await app.result_backend()).schedule_store(app.main)
    beat = Beat(app, store, {})
    stop = asyncio.Event()
    running = asyncio.create_task(beat.run(stop))
    try:
        await asyncio.sleep(0.3)  # subscribed to the control channel
        waits = []
        await app.schedules.add("dyn", task="changes.tick", every=3600)
        waits.append(await _until(lambda: "dyn" in beat.entries, 2.0))
        await app.schedules.pause("dyn")
        waits.append(await _until(lambda: beat.entries["dyn"].paused, 2.0))
        await app.schedules.resume("dyn")
        waits.append(await _until(lambda: not beat.entries["dyn"].paused, 2.0))
        await app.schedules.remove("dyn")
        waits.append(await _until(lambda: "dyn" not in beat.entries, 2.0))
        assert max(waits) < 1.0, waits
    finally:
        stop.set()
        await running
