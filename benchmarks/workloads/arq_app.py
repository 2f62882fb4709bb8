"""arq: its own queue named after the namespace, job ids prefixed with it.

arq pins redis<6, so this module runs in .venv-bench/arq (the harness picks the interpreter).

Worker: `arq benchmarks.workloads.arq_app.WorkerSettings`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import result_key_prefix

from benchmarks.common import SLEEP_S, NotSupported, concurrency, ns, redis_url

NS = ns()
#: arq's result wait polls; 1 ms keeps the round trip honest (its default is 500 ms)
POLL_S = 0.001


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def sleep50(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(SLEEP_S)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, sleep50]
    redis_settings = RedisSettings.from_dsn(redis_url())
    queue_name = NS
    max_jobs = concurrency()
    keep_result = 3600
    health_check_interval = 3600
    #: the worker polls its queue; 10 ms instead of the default 500 ms, else every round trip
    #: waits for the next poll
    poll_delay = 0.01


class ArqAdapter:
    batch_note = "asyncio.gather (no batch API)"

    def __init__(self) -> None:
        self.pool: ArqRedis | None = None
        self.ids = itertools.count()

    async def start(self) -> None:
        self.pool = await create_pool(WorkerSettings.redis_settings, default_queue_name=NS)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    async def send(self, kind: str) -> Any:
        assert self.pool is not None
        return await self.pool.enqueue_job(kind, _job_id=f"{NS}-{next(self.ids)}")

    async def send_many(self, kind: str, count: int) -> list[Any]:
        return list(await asyncio.gather(*(self.send(kind) for _ in range(count))))

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        assert self.pool is not None
        async with self.pool.pipeline(transaction=False) as pipe:
            for job in handles:
                pipe.exists(result_key_prefix + job.job_id)
            return [bool(x) for x in await pipe.execute()]

    async def roundtrip(self) -> None:
        job = await self.send("noop")
        await job.result(timeout=10, poll_delay=POLL_S)

    async def chord(self, size: int) -> None:
        raise NotSupported("arq has no chord")


def make_adapter() -> ArqAdapter:
    return ArqAdapter()
