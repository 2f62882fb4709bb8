"""Round trips through two worker builds on PostgreSQL, and aiotask on Redis, interleaved.

    .venv/bin/python -m benchmarks.postgres_ab --base-python /path/to/other/.venv/bin/python

On a shared, loaded machine two separate runs differ by more than most changes do. Here one
producer (this process) sends one task at a time and waits for its result, taking turns
between three workers, each in a schema or key prefix of its own: PostgreSQL with a worker
run by `--base-python` (say a worktree of main, whose venv imports its own aiotask),
PostgreSQL with a worker of this checkout, and Redis with a worker of this checkout. Each
round starts with another of the three, so all see the same load; p50/p95 and their ratios
are printed. The producer side (publish, wait) is this checkout's for all three.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.postgres_bench import APP_MODULE, URLS, cleanup, make_app, start_worker

if TYPE_CHECKING:
    import subprocess

KINDS = ("base", "new", "redis")


async def measure(base_python: str, rounds: int, workdir: Path) -> dict[str, list[float]]:
    python = {"base": base_python, "new": sys.executable, "redis": sys.executable}
    url = {"base": URLS["postgres"], "new": URLS["postgres"], "redis": URLS["redis"]}
    prefix = {k: f"ab{uuid.uuid4().hex[:10]}" for k in KINDS}
    apps = {k: make_app(url[k], prefix[k]) for k in KINDS}
    trips: dict[str, list[float]] = {k: [] for k in KINDS}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for k in KINDS:
            await apps[k].__aenter__()
            await apps[k].tasks["noop"].send(-1)  # connect, create the tables
        for k in KINDS:
            workers.append(
                await asyncio.to_thread(start_worker, workdir, url[k], prefix[k], python[k])
            )
        for k in KINDS:  # warm up: pools, LISTEN, caches
            for i in range(30):
                await (await apps[k].tasks["noop"].send(i)).get(timeout=30)
        print(f"load average at start: {os.getloadavg()}")
        for r in range(rounds):
            for k in KINDS[r % 3 :] + KINDS[: r % 3]:
                t0 = time.perf_counter()
                await (await apps[k].tasks["noop"].send(r)).get(timeout=30)
                trips[k].append((time.perf_counter() - t0) * 1000)
        print(f"load average at end:   {os.getloadavg()}")
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
        for k in KINDS:
            await apps[k].__aexit__(None, None, None)
            await cleanup("redis" if k == "redis" else "postgres", url[k], prefix[k])
    return trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-python", required=True, help="the python of the other build")
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "pgbench_app.py").write_text(APP_MODULE)
        trips = asyncio.run(measure(args.base_python, args.rounds, workdir))
    p50 = {k: statistics.median(t) for k, t in trips.items()}
    for k, t in trips.items():
        p95 = statistics.quantiles(t, n=20)[-1]
        print(f"{k:6} round trip p50 {p50[k]:7.2f} ms   p95 {p95:7.2f} ms")
    print(
        f"p50 ratios: new/base {p50['new'] / p50['base']:.2f}, new/redis "
        f"{p50['new'] / p50['redis']:.2f}, base/redis {p50['base'] / p50['redis']:.2f}"
    )


if __name__ == "__main__":
    main()
