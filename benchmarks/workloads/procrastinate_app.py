"""procrastinate on PostgreSQL: its tables in the measurement's own schema (search_path), one
queue named after it (its LISTEN channel is per queue, and channels are database-wide).

Worker: `procrastinate --app benchmarks.workloads.procrastinate_app.app worker
--concurrency 100 --queues <schema>` (LISTEN/NOTIFY on, its default).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from procrastinate import App, PsycopgConnector

from benchmarks.common import SLEEP_S, NotSupported, pg_schema, postgres_url

SCHEMA = pg_schema()
#: procrastinate keeps no results: a round trip polls the job's status (1 ms apart)
POLL_S = 0.001
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "aborted"})

app = App(
    connector=PsycopgConnector(
        conninfo=postgres_url(), kwargs={"options": f"-c search_path={SCHEMA}"}
    )
)


@app.task(name="noop", queue=SCHEMA)
async def noop() -> None:
    return None


@app.task(name="sleep50", queue=SCHEMA)
async def sleep50() -> None:
    await asyncio.sleep(SLEEP_S)


TASKS: dict[str, Any] = {"noop": noop, "sleep50": sleep50}


async def install() -> None:
    """Create the schema and procrastinate's tables in it, before any process starts."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


class ProcrastinateAdapter:
    batch_note = "batch_defer_async (one INSERT)"

    async def start(self) -> None:
        await app.open_async()

    async def close(self) -> None:
        await app.close_async()

    async def send(self, kind: str) -> Any:
        return await TASKS[kind].defer_async()

    async def send_many(self, kind: str, count: int) -> list[Any]:
        return list(await TASKS[kind].batch_defer_async(*({} for _ in range(count))))

    async def statuses(self, ids: list[int]) -> dict[int, str]:
        rows = await app.connector.execute_query_all_async(
            "SELECT id, status::text AS status FROM procrastinate_jobs WHERE id = ANY(%(ids)s)",
            ids=ids,
        )
        return {r["id"]: r["status"] for r in rows}

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        found = await self.statuses(handles)
        return [found.get(h) in TERMINAL for h in handles]

    async def roundtrip(self) -> None:
        job = await noop.defer_async()
        give_up = time.monotonic() + 10
        while (await self.statuses([job])).get(job) not in TERMINAL:
            if time.monotonic() > give_up:
                raise TimeoutError(f"procrastinate job {job} not done after 10 s")
            await asyncio.sleep(POLL_S)

    async def chord(self, size: int) -> None:
        raise NotSupported("procrastinate has no chord")


def make_adapter() -> ProcrastinateAdapter:
    return ProcrastinateAdapter()
