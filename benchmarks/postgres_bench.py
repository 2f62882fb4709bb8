"""aiotask on PostgreSQL beside aiotask on Redis, same machine, same run: ratios, not absolutes.

    .venv/bin/python -m benchmarks.postgres_bench [--n 10000] [--brokers postgres,redis]

Brokers: postgres, postgres-async (the same URL with `?synchronous_commit=off`: publishes
commit without waiting for the WAL flush too), redis.

Per broker (results in the same server as the broker):
- enqueue one: N/10 sequential `await noop.send()` (one round trip each), tasks/s;
- enqueue batched: N tasks in `send_batch` calls of 500, tasks/s;
- drain: a worker (`aiotask worker -c 100 --prefetch 200`, a process) started on N queued
  tasks, seconds until the queue shows nothing ready or in flight;
- round trip: 300 sequential send + get with the worker idle and running, p50 / p95 ms;
- PostgreSQL only: the size of the messages and results tables after the run (acked rows are
  deleted; the space goes back to the free-space map at the next (auto)vacuum).
Everything lives under a unique key_prefix (a schema on PostgreSQL), removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from aiotask import App
from benchmarks.harness import cleanup_redis

_PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
URLS = {
    "postgres": _PG,
    # every commit asynchronous, publishes too: a server crash may lose the last ~0.6 s of
    # sends (3 x wal_writer_delay), as Redis's default appendfsync everysec may lose ~1 s
    "postgres-async": _PG + ("&" if "?" in _PG else "?") + "synchronous_commit=off",
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
}

APP_MODULE = textwrap.dedent(
    """
    import os
    from aiotask import App

    app = App("pgbench", broker=os.environ["BENCH_URL"], key_prefix=os.environ["BENCH_PREFIX"])

    @app.task(name="noop")
    async def noop(i: int) -> int:
        return i
    """
)


def make_app(url: str, prefix: str) -> App:
    app = App("pgbench", broker=url, key_prefix=prefix)

    @app.task(name="noop")
    async def noop(i: int) -> int:
        return i

    return app


def start_worker(
    workdir: Path, url: str, prefix: str, python: str = sys.executable
) -> subprocess.Popen[bytes]:
    """The worker (run by `python`: postgres_ab runs main's beside the branch's), its log in a
    file (a pipe nobody reads would fill up and stall it)."""
    env = dict(os.environ, BENCH_URL=url, BENCH_PREFIX=prefix, PYTHONPATH=str(workdir))
    log = workdir / f"{prefix}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(python, "-m", "aiotask", "worker", "-A", "pgbench_app:app"),
                *("-c", "100", "--prefetch", "200", "-l", "INFO"),
            ],
            env=env,
            cwd=workdir,
            stderr=out,
            stdout=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while b" ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("worker did not start:\n" + log.read_text())
        time.sleep(0.05)
    return proc


async def _idle(app: App) -> bool:
    (stats,) = await app.broker.queue_stats(["default"])
    return stats.ready == 0 and not stats.in_flight


async def measure(kind: str, n: int, workdir: Path) -> dict[str, float]:
    url, prefix = URLS[kind], f"bench{uuid.uuid4().hex[:10]}"
    app = make_app(url, prefix)
    noop = app.tasks["noop"]
    out: dict[str, float] = {}
    worker = None
    try:
        async with app:
            await noop.send(-1)  # connect, create tables: not timed
            one = max(n // 10, 100)
            t0 = time.perf_counter()
            for i in range(one):
                await noop.send(i)
            out["enqueue one /s"] = one / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for start in range(0, n, 500):
                await noop.send_batch((i,) for i in range(start, min(start + 500, n)))
            out["enqueue batched /s"] = n / (time.perf_counter() - t0)
            worker = await asyncio.to_thread(start_worker, workdir, url, prefix)
            t0 = time.perf_counter()
            while not await _idle(app):  # noqa: ASYNC110 - a server-side count, no event
                await asyncio.sleep(0.02)
            out["drain s"] = time.perf_counter() - t0
            out["drain /s"] = (n + one + 1) / out["drain s"]
            trips = []
            for i in range(300):
                t1 = time.perf_counter()
                r = await noop.send(i)
                await r.get(timeout=30)
                trips.append((time.perf_counter() - t1) * 1000)
            out["round trip p50 ms"] = statistics.median(trips)
            out["round trip p95 ms"] = statistics.quantiles(trips, n=20)[-1]
            if kind.startswith("postgres"):
                out.update(await table_sizes(url, prefix))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        await cleanup(kind, url, prefix)
    return out


async def table_sizes(url: str, prefix: str) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        sizes = {}
        for table in ("messages", "results"):
            size = await conn.fetchval(
                "SELECT pg_total_relation_size($1::regclass)", f'"{prefix}".{table}'
            )
            sizes[f"{table} table kB"] = size / 1024
        return sizes
    finally:
        await conn.close()


async def cleanup(kind: str, url: str, prefix: str) -> None:
    if kind.startswith("postgres"):
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
        finally:
            await conn.close()
        return
    await cleanup_redis(url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--brokers", default="postgres,redis")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "pgbench_app.py").write_text(APP_MODULE)
        for kind in kinds:
            results[kind] = asyncio.run(measure(kind, args.n, workdir))
    rows = sorted({name for r in results.values() for name in r})
    print(
        f"{'':24}"
        + "".join(f"{k:>16}" for k in kinds)
        + ("   postgres/redis" if len(kinds) == 2 else "")
    )
    for name in rows:
        cells = [results[k].get(name) for k in kinds]
        line = f"{name:24}" + "".join(
            f"{c:16.1f}" if c is not None else f"{'-':>16}" for c in cells
        )
        if len(kinds) == 2 and None not in cells and cells[1]:
            line += f"   {cells[0] / cells[1]:.2f}"  # type: ignore[operator]
        print(line)


if __name__ == "__main__":
    main()
