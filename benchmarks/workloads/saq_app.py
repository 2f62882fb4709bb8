"""SAQ on Redis: a queue named after the namespace (its keys are `saq:<ns>:...`).

Worker: `saq benchmarks.workloads.saq_app.settings --workers 1 -q`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from saq import Queue
from saq.job import TERMINAL_STATUSES

from benchmarks.common import SLEEP_S, NotSupported, concurrency, ns, redis_url

NS = ns()
#: SAQ's result wait polls; 1 ms keeps the round trip honest (its default is 500 ms)
POLL_S = 0.001

queue = Queue.from_url(redis_url(), name=NS)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def sleep50(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(SLEEP_S)


settings: dict[str, Any] = {
    "queue": queue,
    "functions": [noop, sleep50],
    "concurrency": concurrency(),
}


class SaqAdapter:
    batch_note = "asyncio.gather (no batch API)"

    def __init__(self) -> None:
        self.ids = itertools.count()

    async def start(self) -> None:
        await queue.connect()

    async def close(self) -> None:
        await queue.disconnect()

    async def send(self, kind: str) -> Any:
        return await queue.enqueue(kind, key=f"{NS}-{next(self.ids)}")

    async def send_many(self, kind: str, count: int) -> list[Any]:
        return list(await asyncio.gather(*(self.send(kind) for _ in range(count))))

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        jobs = await queue.jobs([h.key for h in handles])
        return [j is not None and j.status in TERMINAL_STATUSES for j in jobs]

    async def roundtrip(self) -> None:
        # Queue.apply polls (1 ms here; default 500 ms). SAQ's pub/sub wait,
        # Job.refresh(until_complete=...), re-subscribes on every call and loses the wake-up
        # when a warm worker finishes first, so it cannot be used for a latency loop.
        await queue.apply("noop", timeout=10, poll_interval=POLL_S)

    async def chord(self, size: int) -> None:
        raise NotSupported("SAQ has no chord")


def make_adapter() -> SaqAdapter:
    return SaqAdapter()
