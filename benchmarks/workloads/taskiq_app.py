"""taskiq with taskiq-redis: RedisStreamBroker (Streams + consumer group) and the Redis backend.

The stream, the consumer group and the result keys are all named after the namespace.

Worker: `taskiq worker benchmarks.workloads.taskiq_app:broker --workers 1 --max-async-tasks 100`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.common import CPU_N, SLEEP_S, NotSupported, ns, redis_url, spin

NS = ns()
#: taskiq's result wait polls; 1 ms keeps the round trip honest (its default is 200 ms)
POLL_S = 0.001

result_backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
    redis_url(), prefix_str=NS, result_ex_time=3600
)
broker = RedisStreamBroker(redis_url(), queue_name=NS, consumer_group_name=NS).with_result_backend(
    result_backend
)


@broker.task(task_name="noop")
async def noop() -> None:
    return None


@broker.task(task_name="sleep50")
async def sleep50() -> None:
    await asyncio.sleep(SLEEP_S)


@broker.task(task_name="cpu")
def cpu() -> int:
    return spin(CPU_N)


TASKS: dict[str, Any] = {"noop": noop, "sleep50": sleep50, "cpu": cpu}


class TaskiqAdapter:
    batch_note = "asyncio.gather (no batch API)"

    def __init__(self) -> None:
        self.r = aioredis.Redis.from_url(redis_url())

    async def start(self) -> None:
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()
        await self.r.aclose()

    async def send(self, kind: str) -> Any:
        return await TASKS[kind].kiq()

    async def send_many(self, kind: str, count: int) -> list[Any]:
        task = TASKS[kind]
        return list(await asyncio.gather(*(task.kiq() for _ in range(count))))

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        async with self.r.pipeline(transaction=False) as pipe:
            for h in handles:
                pipe.exists(f"{NS}:{h.task_id}")
            return [bool(x) for x in await pipe.execute()]

    async def roundtrip(self) -> None:
        task = await noop.kiq()
        await task.wait_result(check_interval=POLL_S, timeout=10)

    async def chord(self, size: int) -> None:
        raise NotSupported("taskiq has no chord")


def make_adapter() -> TaskiqAdapter:
    return TaskiqAdapter()
