"""Beats survive a restart of the store they agree in: no slot lost, none sent twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

from aiotask import App
from aiotask.beat.entry import Entry
from aiotask.beat.runner import Beat
from aiotask.beat.schedule import Every
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from pathlib import Path

ENTRY = Entry(name="tick", task="restart.tick", schedule=Every(1), catch_up="all")


def make_app(broker: str, backend: str) -> App:
    app = App("restart", broker=broker, backend=backend)

    @app.task(name="restart.tick")
    async def tick() -> None:
        return None

    return app


async def test_two_beats_through_a_store_restart(tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    redis.start()
    broker = f"sqlite:///{tmp_path}/restart.db"
    apps = [make_app(broker, redis.url) for _ in range(2)]
    stop = asyncio.Event()
    try:
        for app in apps:
            await app.connect()
        beats = [
            Beat(app, (await app.result_backend()).schedule_store(app.main), {"tick": ENTRY})
            for app in apps
        ]
        running = [asyncio.create_task(b.run(stop)) for b in beats]
        await asyncio.sleep(4.0)
        down_at = time.time()
        redis.kill()  # the store dies (kill -9) with both beats mid-run
        await asyncio.sleep(3.0)
        redis.start()  # same port, same append-only file: the watermarks are back
        up_at = time.time()
        await asyncio.sleep(5.0)
        stop.set()
        await asyncio.gather(*running)
        got: list[str] = []
        while True:
            try:
                async with asyncio.timeout(0.3):
                    batch = await apps[0].broker.receive(["default"], 1000)
            except TimeoutError:
                break
            got += [d.message_id for d in batch]
            await apps[0].broker.ack(batch)
    finally:
        stop.set()
        for app in apps:
            await app.close()
        redis.kill()
    counts = Counter(got)
    assert max(counts.values()) == 1, "a slot was sent twice"
    by_id = {ENTRY.slot_id(float(s)): s for s in range(int(down_at) - 30, int(up_at) + 30)}
    slots = sorted(by_id[i] for i in counts)
    assert slots == list(range(slots[0], slots[-1] + 1)), "a slot was lost"
    # the run covers the outage: slots from before it, during it (sent late), and after it
    assert slots[0] < down_at - 1 and slots[-1] > up_at + 2, (slots, down_at, up_at)
