"""Celery: Redis (or RabbitMQ) broker, Redis result backend, default settings otherwise.

Every Redis key carries the measurement's namespace through kombu's `global_keyprefix` (broker
and result backend); the queue and exchange are named after it too, which is what isolates the
RabbitMQ variant. Remote control, events, mingle, gossip and heartbeats are off, as any
throughput-minded deployment does.

Worker: `celery -A benchmarks.workloads.celery_app worker -P prefork|threads -c N ...`.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from celery import Celery, chord, group
from celery.exceptions import TimeoutError as CeleryTimeout

from benchmarks.common import (
    CPU_N,
    SLEEP_S,
    amqp_url,
    broker_kind,
    ns,
    redis_url,
    spin,
)

NS = ns()
PREFIX = f"{NS}:"
_amqp = broker_kind() == "amqp"

app = Celery("bench", broker=amqp_url() if _amqp else redis_url(), backend=redis_url())
app.conf.update(
    task_default_queue=NS,
    task_default_exchange=NS,
    task_default_routing_key=NS,
    broker_transport_options={} if _amqp else {"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    result_expires=3600,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="sleep50")
def sleep50() -> None:
    # Celery runs I/O-bound work in its thread pool (-P threads -c 100): a blocking sleep
    time.sleep(SLEEP_S)


@app.task(name="cpu")
def cpu() -> int:
    return spin(CPU_N)


@app.task(name="ident")
def ident(i: int) -> int:
    return i


@app.task(name="tsum")
def tsum(values: list[int]) -> int:
    return sum(values)


TASKS: dict[str, Any] = {"noop": noop, "sleep50": sleep50, "cpu": cpu}


class CeleryAdapter:
    batch_note = "group().apply_async()"

    def __init__(self) -> None:
        self.r = aioredis.Redis.from_url(redis_url())

    async def start(self) -> None:
        app.connection_for_write().ensure_connection(max_retries=3)

    async def close(self) -> None:
        await self.r.aclose()
        app.close()

    async def send(self, kind: str) -> str:
        return str(TASKS[kind].apply_async().id)

    async def send_many(self, kind: str, count: int) -> list[str]:
        res = group(TASKS[kind].s() for _ in range(count)).apply_async()
        return [str(r.id) for r in res.results]

    async def done_flags(self, handles: list[str]) -> list[bool]:
        # the result key exists once the task has finished (task_track_started is off)
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in handles:
                pipe.exists(f"{PREFIX}celery-task-meta-{tid}")
            return [bool(x) for x in await pipe.execute()]

    async def roundtrip(self) -> None:
        # blocking, like every Celery client call; bounded by the get() timeout
        try:
            noop.apply_async().get(timeout=10)
        except CeleryTimeout as exc:
            raise TimeoutError(str(exc)) from exc

    async def chord(self, size: int) -> None:
        res = chord(ident.s(i) for i in range(size))(tsum.s())
        total = res.get(timeout=300)
        assert total == size * (size - 1) // 2, total


def make_adapter() -> CeleryAdapter:
    return CeleryAdapter()
