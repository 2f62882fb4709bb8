"""aiotask: Redis Streams (or RabbitMQ) broker, Redis results, all under the namespace prefix;
or one SQLite file for both (the embedded default); or PostgreSQL for both (a schema named
after the namespace).

Worker: `aiotask worker -A benchmarks.workloads.aiotask_app:app -c 100 -P 2 --prefetch 200`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiotask
from aiotask import App
from benchmarks.common import (
    CPU_N,
    SLEEP_S,
    NotSupported,
    amqp_url,
    broker_kind,
    ns,
    postgres_url,
    redis_url,
    spin,
)

NS = ns()

if broker_kind() == "sqlite":  # one file for messages and results, as the embedded default
    _SQLITE = os.environ.get("AIOTASK_BROKER_URL", "sqlite:///aiotask-bench.db")
    app = App("bench", broker=_SQLITE, backend=_SQLITE, key_prefix=NS)
elif broker_kind() == "postgres":  # messages and results in the schema NS
    app = App("bench", broker=postgres_url(), backend=postgres_url(), key_prefix=NS)
else:
    app = App(
        "bench",
        broker=amqp_url() if broker_kind() == "amqp" else redis_url(),
        backend=redis_url(),
        key_prefix=NS,
    )


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="sleep50")
async def sleep50() -> None:
    await asyncio.sleep(SLEEP_S)


@app.task(name="cpu")
def cpu() -> int:  # a plain function: runs in the worker's process pool
    return spin(CPU_N)


@app.task(name="ident")
async def ident(i: int) -> int:
    return i


@app.task(name="tsum")
async def tsum(values: list[int]) -> int:
    return sum(values)


TASKS: dict[str, Any] = {"noop": noop, "sleep50": sleep50, "cpu": cpu}


class AiotaskAdapter:
    batch_note = "send_batch (one pipelined publish)"

    async def start(self) -> None:
        await app.connect()

    async def close(self) -> None:
        await app.close()

    async def send(self, kind: str) -> Any:
        return await TASKS[kind].send()

    async def send_many(self, kind: str, count: int) -> list[Any]:
        return list(await TASKS[kind].send_batch([() for _ in range(count)]))

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        backend = await app.result_backend()
        records = await backend.get_many([h.id for h in handles])
        return [r is not None and r.ready for r in records]

    async def roundtrip(self) -> None:
        r = await noop.send()
        await r.get(timeout=10)

    async def chord(self, size: int) -> None:
        if not hasattr(aiotask, "chord"):
            raise NotSupported("not yet: aiotask.chord does not exist")
        header = aiotask.group(ident.s(i) for i in range(size))
        r = await aiotask.chord(header, tsum.s()).send()
        total = await r.get(timeout=300)
        assert total == size * (size - 1) // 2, total


def make_adapter() -> AiotaskAdapter:
    return AiotaskAdapter()
