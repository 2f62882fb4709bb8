"""Drain and round trip on a private Redis Cluster vs a private single Redis, on this machine.

    python -m benchmarks.redis_cluster               # 5,000-task drain, 300 round trips, ~30 s
    python -m benchmarks.redis_cluster --n 20000 --trips 1000

Both servers are started here (tests/servers.py: a single redis-server, and 6 nodes in cluster
mode, 3 primaries + 3 replicas, all on this host), each measured with one in-process worker
(concurrency 100) on an event loop of its own. Drain: N no-op tasks queued, then the time for the
worker to run them all. Round trip: send one task and wait for its result, one after another;
the median. Prints both figures and the ratios cluster / single node (speed is a ratio here,
never an assertion). Replication to the replicas is part of the cluster's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiotask import App
from aiotask.testing import start_worker
from tests.servers import PrivateRedis, PrivateRedisCluster


async def measure(url: str, n: int, trips: int) -> tuple[float, float]:
    """(tasks per second drained, median round trip in ms) on the broker at `url`."""
    app = App("bench", broker=url, key_prefix=f"bench{time.monotonic_ns()}")
    done = asyncio.Event()
    count = 0

    @app.task(name="bench.noop")
    async def noop() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    @app.task(name="bench.echo")
    async def echo(x: int) -> int:
        return x

    async with app:
        for start in range(0, n, 500):
            await asyncio.gather(*(noop.send() for _ in range(start, min(start + 500, n))))
        t0 = time.perf_counter()
        async with start_worker(app, concurrency=100):
            await asyncio.wait_for(done.wait(), 600)
            drain = n / (time.perf_counter() - t0)
            times = []
            for i in range(trips):
                t1 = time.perf_counter()
                assert await (await echo.send(i)).get(timeout=30) == i
                times.append((time.perf_counter() - t1) * 1000)
    return drain, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="tasks in the drain")
    parser.add_argument("--trips", type=int, default=300, help="sequential round trips")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = PrivateRedis(Path(tmp))
        (Path(tmp) / "c").mkdir()
        cluster = PrivateRedisCluster(Path(tmp) / "c")
        try:
            single.start()
            cluster.start()
            s_drain, s_rtt = asyncio.run(measure(single.url, args.n, args.trips))
            c_drain, c_rtt = asyncio.run(measure(cluster.url, args.n, args.trips))
        finally:
            single.kill()
            cluster.stop()
    print(f"single node: drain {s_drain:,.0f} tasks/s, round trip median {s_rtt:.2f} ms")
    print(f"cluster    : drain {c_drain:,.0f} tasks/s, round trip median {c_rtt:.2f} ms")
    print(f"ratios cluster/single: drain {c_drain / s_drain:.2f}, round trip {c_rtt / s_rtt:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
