"""Oban for Python on PostgreSQL: its tables in the measurement's own schema (its `prefix`,
which also names its NOTIFY channels). Oban needs Python >= 3.12, so it runs from its own
virtualenv (.venv-bench/oban); this module imports nothing of aiotask's.

Worker: `oban start --queues default:100 --prefix <schema> --cron-modules
benchmarks.workloads.oban_app` (the module import registers the workers).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from oban import Oban, worker

from benchmarks.common import SLEEP_S, NotSupported, pg_schema, postgres_url

SCHEMA = pg_schema()
#: Oban keeps no results (a job's row records its state): a round trip polls it, 1 ms apart
POLL_S = 0.001
TERMINAL = frozenset({"completed", "discarded", "cancelled"})


@worker(queue="default")
class Noop:
    async def process(self, job: Any) -> None:
        return None


@worker(queue="default")
class Sleep50:
    async def process(self, job: Any) -> None:
        await asyncio.sleep(SLEEP_S)


WORKERS: dict[str, Any] = {"noop": Noop, "sleep50": Sleep50}


async def install() -> None:
    """Create the schema and Oban's tables in it, before any process starts."""
    from oban.schema import install as install_schema

    pool = await Oban.create_pool(postgres_url())
    try:
        async with pool.connection() as conn:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await install_schema(pool, prefix=SCHEMA)
    finally:
        await pool.close()


class ObanAdapter:
    batch_note = "enqueue_many (one INSERT)"

    def __init__(self) -> None:
        self.pool: Any = None
        self.oban: Oban | None = None

    async def start(self) -> None:
        self.pool = await Oban.create_pool(postgres_url())
        self.oban = Oban(pool=self.pool, prefix=SCHEMA)  # no queues: a client only
        await self.oban.start()

    async def close(self) -> None:
        if self.oban is not None:
            await self.oban.stop()
        if self.pool is not None:
            await self.pool.close()

    async def send(self, kind: str) -> Any:
        assert self.oban is not None
        return (await self.oban.enqueue(WORKERS[kind].new({}))).id

    async def send_many(self, kind: str, count: int) -> list[Any]:
        assert self.oban is not None
        jobs = await self.oban.enqueue_many([WORKERS[kind].new({}) for _ in range(count)])
        return [j.id for j in jobs]

    async def states(self, ids: list[int]) -> dict[int, str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT id, state::text FROM {SCHEMA}.oban_jobs WHERE id = ANY(%s)",  # noqa: S608
                (ids,),
            )
            return dict(await cur.fetchall())

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        found = await self.states(handles)
        return [found.get(h) in TERMINAL for h in handles]

    async def roundtrip(self) -> None:
        job = await self.send("noop")
        give_up = time.monotonic() + 10
        while (await self.states([job])).get(job) not in TERMINAL:
            if time.monotonic() > give_up:
                raise TimeoutError(f"Oban job {job} not done after 10 s")
            await asyncio.sleep(POLL_S)

    async def chord(self, size: int) -> None:
        raise NotSupported("Oban for Python has no chord")


def make_adapter() -> ObanAdapter:
    return ObanAdapter()
