"""Table growth on PostgreSQL: push many tasks through with result retention on, watch the sizes.

    .venv/bin/python -m benchmarks.postgres_growth [--n 1000000] [--budget 1800]
                                                   [--expires 60] [--backlog 20000]
                                                   [--private]

A worker (`aiotask worker -c 100 --prefetch 200`, a process) runs a no-op task while this
process sends batches of 1,000, keeping at most --backlog tasks queued, until --n tasks were
sent or --budget seconds have passed (then it says how many and extrapolates). Results expire
after --expires seconds (`result_expires`, the retention setting), so the backend's lazy
cleanup deletes them while the run goes on.

Every checkpoint prints `pg_total_relation_size` of each table of the app's schema (heap,
indexes and TOAST), its live and dead row counts (pg_stat_user_tables, as the collector has
them), and the rate. The claim/extend UPDATEs and the ack DELETEs leave dead row versions that
autovacuum reclaims; what must not happen is a size that keeps growing with the number of
tasks pushed (a hot row updated by every message, or retention that cannot keep up). The last
lines: after the drain, and after the retention window passed and a final cleanup + plain
VACUUM (no FULL: the space is reused, not returned). The schema is dropped at the end.

--private runs it on a PostgreSQL cluster of its own (initdb in a temp dir, the server's
defaults: autovacuum on), removed afterwards: the shared development server runs with
autovacuum off, where every dead row version stays until someone runs VACUUM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path

import asyncpg

from aiotask import App
from benchmarks.postgres_bench import URLS, start_worker

APP_MODULE = """
import os
from aiotask import App

app = App("pggrowth", broker=os.environ["BENCH_URL"], key_prefix=os.environ["BENCH_PREFIX"])

@app.task(name="noop")
async def noop(i: int) -> int:
    return i
"""
BATCH = 1000


async def sizes(conn: asyncpg.Connection, schema: str) -> dict[str, tuple[int, int, int]]:
    """table -> (total bytes, live rows, dead rows) for every table of `schema`."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_total_relation_size(c.oid), "
        "coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
        schema,
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def show(label: str, table: dict[str, tuple[int, int, int]], extra: str = "") -> None:
    total = sum(v[0] for v in table.values())
    cells = "  ".join(
        f"{name}={size / 1024:.0f}kB({live}/{dead})"
        for name, (size, live, dead) in table.items()
        if name in ("messages", "results", "consumers", "dead_letters", "events")
    )
    print(f"{label:>22}  total={total / 1024:8.0f} kB  {cells}  {extra}", flush=True)


async def backlog(conn: asyncpg.Connection, schema: str) -> int:
    return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".messages'))  # noqa: S608


async def run(args: argparse.Namespace, workdir: Path, url: str) -> None:
    prefix = f"growth{uuid.uuid4().hex[:10]}"
    os.environ["AIOTASK_RESULT_EXPIRES"] = str(args.expires)
    app = App("pggrowth", broker=url, key_prefix=prefix, result_expires=args.expires)

    @app.task(name="noop")
    async def noop(i: int) -> int:
        return i

    conn = await asyncpg.connect(url)
    print(
        "autovacuum:",
        await conn.fetchval("SHOW autovacuum"),
        "| tasks:",
        f"{args.n:,}",
        "| result_expires:",
        args.expires,
        flush=True,
    )
    worker = None
    try:
        async with app:
            await noop.send(-1)  # creates the broker's tables
            await app.backend.connect()  # and the backend's
            show("before", await sizes(conn, prefix))
            worker = await asyncio.to_thread(start_worker, workdir, url, prefix)
            sent, t0 = 0, time.perf_counter()
            step = max(args.n // 10, BATCH)
            next_mark = step
            while sent < args.n and time.perf_counter() - t0 < args.budget:
                if await backlog(conn, prefix) > args.backlog:
                    await asyncio.sleep(0.05)
                    continue
                size = min(BATCH, args.n - sent)
                await noop.send_batch((i,) for i in range(sent, sent + size))
                sent += size
                if sent >= next_mark:
                    next_mark += step
                    rate = sent / (time.perf_counter() - t0)
                    show(f"{sent:,} sent", await sizes(conn, prefix), f"{rate:.0f} tasks/s")
            while await backlog(conn, prefix):  # noqa: ASYNC110 - a server-side count
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - t0
            show(f"drained {sent:,}", await sizes(conn, prefix), f"{sent / elapsed:.0f} tasks/s")
            if sent < args.n:
                print(
                    f"budget of {args.budget:.0f} s reached after {sent:,} tasks; at this rate "
                    f"{args.n:,} take {args.n * elapsed / sent / 60:.0f} min",
                    flush=True,
                )
            await asyncio.sleep(args.expires + 1)  # every result now expired
            backend = app.backend
            while await backend.cleanup():  # type: ignore[attr-defined]
                pass
            await conn.execute(f'VACUUM "{prefix}".messages, "{prefix}".results')
            await asyncio.sleep(1)  # the statistics collector
            show("expired + cleanup", await sizes(conn, prefix))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds of sending")
    parser.add_argument("--expires", type=float, default=60.0, help="result_expires, seconds")
    parser.add_argument("--backlog", type=int, default=20_000, help="most tasks queued")
    parser.add_argument("--private", action="store_true", help="on a private cluster")
    args = parser.parse_args()
    import tempfile

    server = None
    url = URLS["postgres"]
    if args.private:
        from tests.servers import PrivatePostgres

        server = PrivatePostgres()
        server.start()
        url = server.url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "pgbench_app.py").write_text(APP_MODULE)
            asyncio.run(run(args, workdir, url))
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
