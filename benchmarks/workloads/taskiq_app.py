"""taskiq: RedisStreamBroker (taskiq-redis) or AioPikaBroker (taskiq-aio-pika), Redis results.

On Redis (BENCH_BROKER=redis) the stream, the consumer group and the result keys are all named
after the namespace. On RabbitMQ (BENCH_BROKER=amqp) the exchange, the work queue and the
dead-letter queue are named after it too (the `taskiq-amqp` entry in frameworks.py lists them,
and the harness deletes them by name afterwards); the results stay in Redis under the namespace
prefix, as on Redis.

Worker: `taskiq worker benchmarks.workloads.taskiq_app:broker --workers 1 --max-async-tasks 100`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.common import (
    CPU_N,
    SLEEP_S,
    NotSupported,
    amqp_url,
    broker_kind,
    concurrency,
    ns,
    redis_url,
    spin,
)

if TYPE_CHECKING:
    from taskiq import AsyncBroker

NS = ns()
#: taskiq's result wait polls; 1 ms keeps the round trip honest (its default is 200 ms)
POLL_S = 0.001


def _amqp_broker() -> AsyncBroker:
    from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

    # keep these names in step with `amqp_queues` / `amqp_exchanges` of taskiq-amqp in frameworks.py
    return AioPikaBroker(
        amqp_url(),
        exchange=Exchange(name=NS),
        # classic durable queues, as aiotask and Celery declare (taskiq-aio-pika's default is
        # quorum); messages are persistent either way
        task_queues=[Queue(name=NS, type=QueueType.CLASSIC)],
        dead_letter_queue=Queue(name=f"{NS}.dead_letter", type=QueueType.CLASSIC),
        # its default prefetch (qos 10) would cap --max-async-tasks 100 at 10 tasks in flight;
        # 2 x concurrency is what aiotask's worker runs with (--prefetch 200)
        qos=2 * concurrency(),
    )


result_backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
    redis_url(), prefix_str=NS, result_ex_time=3600
)
_broker: AsyncBroker = (
    _amqp_broker()
    if broker_kind() == "amqp"
    else RedisStreamBroker(redis_url(), queue_name=NS, consumer_group_name=NS)
)
broker = _broker.with_result_backend(result_backend)


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
