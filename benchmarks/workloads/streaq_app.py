"""streaQ: a worker whose queue is named after the namespace (keys `streaq:<ns>:...`).

Worker: `streaq run benchmarks.workloads.streaq_app:worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from streaq import Worker

from benchmarks.common import SLEEP_S, NotSupported, concurrency, ns, redis_url

NS = ns()

worker: Worker[Any] = Worker(redis_url=redis_url(), queue_name=NS, concurrency=concurrency())


@worker.task
async def noop() -> None:
    return None


@worker.task
async def sleep50() -> None:
    await asyncio.sleep(SLEEP_S)


TASKS: dict[str, Any] = {"noop": noop, "sleep50": sleep50}


class StreaqAdapter:
    batch_note = "worker.enqueue_many (pipelined)"

    def __init__(self) -> None:
        self.r = aioredis.Redis.from_url(redis_url())
        self.stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        await self.stack.enter_async_context(worker)  # connects the client side

    async def close(self) -> None:
        await self.stack.aclose()
        await self.r.aclose()

    async def send(self, kind: str) -> Any:
        return await TASKS[kind].enqueue()

    async def send_many(self, kind: str, count: int) -> list[Any]:
        tasks = [TASKS[kind].enqueue() for _ in range(count)]
        await worker.enqueue_many(tasks)
        return tasks

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        async with self.r.pipeline(transaction=False) as pipe:
            for t in handles:
                pipe.exists(worker.results_key + t.id)
            return [bool(x) for x in await pipe.execute()]

    async def roundtrip(self) -> None:
        task = await noop.enqueue()
        await task.result(timeout=10)

    async def chord(self, size: int) -> None:
        raise NotSupported("streaQ has no chord")


def make_adapter() -> StreaqAdapter:
    return StreaqAdapter()
