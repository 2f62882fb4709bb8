"""The cost of a sync send (`task.delay`) against an async one (`await task.send`).

    .venv/bin/python -m benchmarks.sync_send [--n 2000] [--rounds 5] [--brokers redis,sqlite]

For each broker it times N sequential `await add.send(i)` on one event loop, and N sequential
`add.delay(i)` from plain code (each one a hop to aiotask's loop thread and back), in
alternating rounds after a warm-up, and prints the median microseconds per send and the ratio
sync/async (the median of the rounds' ratios). No worker runs: only the producer's cost is
measured. Redis keys live under a unique prefix and are deleted afterwards; the SQLite file is
a temporary one. The target (issue 15) is a ratio within 1.5; docs/sync.md records the figures.

A sync send wakes two more threads than an async one (the loop thread, then the caller), so on
a busy machine the ratio swings with the scheduler; `--cpu 0` pins the process to one core,
which takes cross-core wake-ups out of the comparison.
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

from aiotask import App
from aiotask.sync import run_sync

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def make_app(broker: str, workdir: str, prefix: str) -> App:
    if broker == "redis":
        url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    else:
        url = f"sqlite:///{workdir}/bench.db"
    return App("syncbench", broker=url, backend=None, key_prefix=prefix)


def time_async(app: App, n: int) -> float:
    add = app.tasks["bench.noop"]

    async def main() -> float:
        await add.send(-1)  # connect, create the stream/table: not timed
        start = time.perf_counter()
        for i in range(n):
            await add.send(i)
        elapsed = time.perf_counter() - start
        await app.close()
        return elapsed

    return asyncio.run(main())


def time_sync(app: App, n: int) -> float:
    add = app.tasks["bench.noop"]
    add.delay(-1)  # starts the loop thread and connects: not timed
    start = time.perf_counter()
    for i in range(n):
        add.delay(i)
    return time.perf_counter() - start


def cleanup(app: App, broker: str, prefix: str) -> None:
    run_sync(app.close())
    if broker != "redis":
        return
    from redis.asyncio import Redis

    async def wipe() -> None:
        client = Redis.from_url(app.conf.broker_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()

    asyncio.run(wipe())


def measure(broker: str, n: int, rounds: int) -> tuple[float, float, float]:
    """Median µs per send (async, sync) and the median of the rounds' ratios: each round
    times both back to back, so a shared machine's load disturbs both alike."""
    prefix = f"syncbench-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as workdir:
        app = make_app(broker, workdir, prefix)

        @app.task(name="bench.noop")
        async def noop(i: int) -> None:
            return None

        per_async: list[float] = []
        per_sync: list[float] = []
        try:
            for _ in range(rounds):
                per_async.append(time_async(app, n) / n * 1e6)
                per_sync.append(time_sync(app, n) / n * 1e6)
        finally:
            cleanup(app, broker, prefix)
    ratios = [s / a for a, s in zip(per_async, per_sync, strict=True)]
    return statistics.median(per_async), statistics.median(per_sync), statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="sends per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--brokers", default="redis,sqlite")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(f"{'broker':8} {'async µs/send':>14} {'delay() µs/send':>16} {'ratio':>6}")
    worst = 0.0
    for broker in args.brokers.split(","):
        a, s, ratio = measure(broker, args.n, args.rounds)
        worst = max(worst, ratio)
        print(f"{broker:8} {a:14.1f} {s:16.1f} {ratio:6.2f}")
    print(f"worst ratio {worst:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
