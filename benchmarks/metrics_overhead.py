"""Drain throughput with worker metrics off and on (alternating runs, in one process).

    .venv/bin/python -m benchmarks.metrics_overhead [--n 10000] [--pairs 5]

Each run pre-enqueues N no-op tasks on Redis, then starts a worker (aiotask.testing.start_worker,
-c 100, prefetch 200, results stored) and times until every task ran. "on" is what
`--metrics-port` does: a WorkerMetrics probe (`--stamp`: and SendTime on the app). Prints the
median drain rate of each mode and their ratio, by wall clock and by CPU time of this process
(steadier on a shared machine). Keys live under a unique prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from aiotask import App
from aiotask.metrics import SendTime, WorkerMetrics
from aiotask.testing import start_worker
from benchmarks.common import redis_url


def make_app(prefix: str, stamp: bool) -> App:
    app = App("ovh", broker=redis_url(), backend=redis_url(), key_prefix=prefix)
    if stamp:
        app.middleware.append(SendTime())

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


async def one_run(n: int, metrics: bool, stamp: bool = False) -> tuple[float, float]:
    prefix = f"ovh-{uuid.uuid4().hex[:8]}"
    app = make_app(prefix, stamp=metrics and stamp)
    noop = app.tasks["noop"]
    async with app:
        for start in range(0, n, 1000):
            await noop.send_batch([noop.call() for _ in range(min(1000, n - start))])
        probe = WorkerMetrics() if metrics else None
        began, cpu = time.perf_counter(), time.process_time()
        async with start_worker(app, concurrency=100, prefetch=200, probe=probe) as worker:
            while worker.dispatcher.processed < n:  # noqa: ASYNC110 - a cheap poll
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - began
            cpu = time.process_time() - cpu
        if probe is not None:
            probe.close()
        await _cleanup(app, prefix)
    return n / elapsed, n / cpu


async def _cleanup(app: App, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url())
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--stamp", action="store_true", help="on: SendTime on the app as well")
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu_rates: dict[bool, list[float]] = {False: [], True: []}
    await one_run(min(args.n, 2000), False)  # warm-up: imports, scripts, connections
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for mode in order:
            rate, cpu_rate = await one_run(args.n, mode, stamp=args.stamp)
            rates[mode].append(rate)
            cpu_rates[mode].append(cpu_rate)
            print(
                f"pair {i + 1} metrics {'on ' if mode else 'off'}: {rate:8.0f} tasks/s, "
                f"{cpu_rate:8.0f} tasks per CPU second"
            )
    for label, table in (("wall", rates), ("cpu", cpu_rates)):
        off, on = statistics.median(table[False]), statistics.median(table[True])
        print(f"{label}: median off {off:.0f}/s, on {on:.0f}/s: on/off = {on / off:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
