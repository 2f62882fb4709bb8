"""PgQueuer on PostgreSQL: its tables in the measurement's own schema (PGQUEUER_SCHEMA), its
NOTIFY channel named after it (channels are database-wide).

Worker: `python -m benchmarks.workloads.pgqueuer_app`, which calls `pgqueuer.run` (what
`pgq run ... --batch-size 100 --max-concurrent-tasks 200` does; the `pgq run` command of
PgQueuer 1.6.0 fails at start-up setting up its logging). `max_concurrent_tasks` must be at
least twice the batch: 100 jobs fetched at a time, at most 200 held, as aiotask's -c 100
--prefetch 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from benchmarks.common import SLEEP_S, NotSupported, pg_schema, postgres_url

SCHEMA = pg_schema()
# PgQueuer reads its object names from the environment once, at first use.
os.environ["PGQUEUER_SCHEMA"] = SCHEMA
os.environ["PGQUEUER_CHANNEL"] = f"{SCHEMA}_ch"

import asyncpg  # noqa: E402
import pgqueuer  # noqa: E402
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Job, PgQueuer, Queries  # noqa: E402
from pgqueuer.core.completion import CompletionWatcher  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TERMINAL = frozenset({"canceled", "deleted", "exception", "successful"})
BATCH = 100


@contextlib.asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The worker's factory (what `pgqueuer.run` / `pgq run` take)."""
    conn = await asyncpg.connect(postgres_url())
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    @pgq.entrypoint("sleep50")
    async def sleep50(job: Job) -> None:
        await asyncio.sleep(SLEEP_S)

    try:
        yield pgq
    finally:
        await conn.close()


async def install() -> None:
    """Create the schema and PgQueuer's tables, triggers and functions in it."""
    conn = await asyncpg.connect(postgres_url())
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


class PgQueuerAdapter:
    batch_note = "Queries.enqueue with lists (one INSERT)"

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.queries: Queries | None = None
        self.watcher: CompletionWatcher | None = None

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(postgres_url(), min_size=1, max_size=10)
        driver = AsyncpgPoolDriver(self.pool)
        self.queries = Queries(driver)
        # its result wait: LISTEN on the log table's changes, then one status query; the
        # debounce that coalesces notifications is 1 ms here (default 50 ms)
        self.watcher = CompletionWatcher(
            driver, queries=self.queries, debounce=timedelta(milliseconds=1)
        )
        await self.watcher.__aenter__()

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.__aexit__(None, None, None)
        if self.pool is not None:
            # its pool driver keeps the LISTEN connection checked out: close() would wait
            self.pool.terminate()

    async def send(self, kind: str) -> Any:
        assert self.queries is not None
        return (await self.queries.enqueue(kind, None))[0]

    async def send_many(self, kind: str, count: int) -> list[Any]:
        assert self.queries is not None
        return list(await self.queries.enqueue([kind] * count, [None] * count, [0] * count))

    async def done_flags(self, handles: list[Any]) -> list[bool]:
        assert self.queries is not None
        found = dict(await self.queries.job_status(handles))
        return [found.get(h) in TERMINAL for h in handles]

    async def roundtrip(self) -> None:
        assert self.watcher is not None
        job = await self.send("noop")
        await asyncio.wait_for(self.watcher.wait_for(job), 10)

    async def chord(self, size: int) -> None:
        raise NotSupported("PgQueuer has no chord")


def make_adapter() -> PgQueuerAdapter:
    return PgQueuerAdapter()


if __name__ == "__main__":
    asyncio.run(pgqueuer.run(create_pgqueuer, batch_size=BATCH, max_concurrent_tasks=2 * BATCH))
