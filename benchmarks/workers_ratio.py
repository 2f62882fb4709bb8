"""Drain rate of `aiotask worker --workers 1` vs `--workers 2` (one machine, real processes).

    python -m benchmarks.workers_ratio                      # Redis, ~1 min
    python -m benchmarks.workers_ratio --broker sqlite --pairs 1
    python -m benchmarks.workers_ratio --workers 1,2,4,8    # the scaling curve on a bigger host

Two workloads: `noop` (the broker and the framework's overhead: Redis itself shares the cores)
and `cpu` (an async task spinning ~2 ms of pure Python: what one event loop cannot spread over
cores). Per measurement: a fresh key prefix (or SQLite file), a backlog published before the
worker starts, then `aiotask worker --workers N`; the rate counts the messages left when the
last child logs "ready" over the time until none is ready or in flight. The variants alternate,
the order swapped every pair; the figure is the ratio of the median rates to `--workers 1`.
On a shared machine absolute rates swing with the load: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

from aiotask import App

TASKS = textwrap.dedent(
    """
    import os
    from aiotask import App

    app = App("wbench", broker=os.environ["WB_BROKER"], backend=None,
              key_prefix=os.environ["WB_PREFIX"])

    @app.task(name="wb.noop")
    async def noop() -> None:
        return None

    @app.task(name="wb.cpu")
    async def cpu(n: int) -> int:
        acc = 0
        for i in range(n):
            acc = (acc + i * i) % 1_000_003
        return acc
    """
)
#: loop length of the cpu task: about 2 ms of pure Python on one core
CPU_N = 30_000
BACKLOG = {"noop": 10_000, "cpu": 2_000}
REDIS = "redis://127.0.0.1:6379/0"


async def _fill(broker: str, prefix: str, workload: str, n: int) -> None:
    async with App("wbench", broker=broker, backend=None, key_prefix=prefix) as app:
        args = [] if workload == "noop" else [CPU_N]
        for start in range(0, n, 50):
            count = min(50, n - start)
            await asyncio.gather(
                *(app.send_task(f"wb.{workload}", args=args) for _ in range(count))
            )


async def _left(broker: str, prefix: str) -> int:
    async with App("wbench", broker=broker, backend=None, key_prefix=prefix) as app:
        stats = (await app.broker.queue_stats(["default"]))[0]
        return stats.ready + (stats.in_flight or 0) + (stats.delayed or 0)


async def _clean(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


def measure(kind: str, workload: str, workers: int, workdir: Path) -> float:
    """Messages per second drained by `--workers N` from a fresh backlog."""
    prefix = f"wb{uuid.uuid4().hex[:10]}"
    broker = REDIS if kind == "redis" else f"sqlite:///{workdir}/{prefix}.db"
    asyncio.run(_fill(broker, prefix, workload, BACKLOG[workload]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(WB_BROKER=broker, WB_PREFIX=prefix, PYTHONPATH=str(workdir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "wb_tasks:app", "-l", "INFO",
         "--workers", str(workers), "-c", "100"],
        cwd=workdir, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    stream = proc.stderr
    ready = threading.Event()
    seen = [0]

    def read() -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                if " ready" in line:
                    seen[0] += 1
                    if seen[0] >= workers:
                        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("workers did not start")
        start = time.perf_counter()
        left = asyncio.run(_left(broker, prefix))
        while asyncio.run(_left(broker, prefix)) > 0:
            time.sleep(0.05)
        return left / (time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(60)
        reader.join(5)
        stream.close()
        if kind == "redis":
            asyncio.run(_clean(prefix))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--workloads", default="noop,cpu")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    print(f"{os.cpu_count()} CPUs; broker {args.broker}; a shared machine: read the ratios")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "wb_tasks.py").write_text(TASKS)
        for workload in args.workloads.split(","):
            rates: dict[int, list[float]] = {n: [] for n in counts}
            for pair in range(args.pairs):
                for n in counts if pair % 2 == 0 else list(reversed(counts)):
                    rates[n].append(measure(args.broker, workload, n, workdir))
            base = statistics.median(rates[counts[0]])
            for n in counts:
                median = statistics.median(rates[n])
                print(f"{workload:5} --workers {n}: {median:9.0f} msg/s  ratio {median / base:.2f}"
                      f"  (runs: {', '.join(f'{r:.0f}' for r in rates[n])})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
