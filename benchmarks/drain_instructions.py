"""Instructions per task of an in-process drain on the local Redis, counted by callgrind.

    python -m benchmarks.drain_instructions              # 2,000 and 4,000 no-op tasks
    python -m benchmarks.drain_instructions --events     # the same with events on

On a shared machine CPU time swings with the neighbours; instruction counts barely do. Each
drain runs in a child `valgrind --tool=callgrind --instr-atstart=no` process that enqueues the
tasks, starts a Worker (aiotask.testing.start_worker, -c 100, prefetch 200), switches the
instrumentation on with `callgrind_control` once the worker is up and off when the last task
settled. The difference between the two sizes, divided by the difference in tasks, leaves the
fixed costs out. Under valgrind a drain runs ~50x slower, so time-driven work (the events
flush every 0.1 s, heartbeats) is spread over fewer tasks than at full speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiotask.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
SIZES = (2000, 4000)


def toggle(state: str) -> None:
    """Switch this process's callgrind instrumentation on or off (blocking on purpose: nothing
    runs on the loop while it switches)."""
    argv = ["callgrind_control", "-i", state, str(os.getpid())]
    subprocess.run(argv, check=True, capture_output=True)


async def drain(
    n: int,
    events: bool,
    redis_url: str,
    on: Callable[[Worker], None] = lambda _: toggle("on"),
    off: Callable[[], None] = lambda: toggle("off"),
    warm: int = 0,
) -> None:
    """The child: enqueue n no-op tasks, drain them with one Worker, clean the namespace up.
    `on` runs once the worker is up (it may wrap the worker's parts), `off` when the last
    task settled: by default they switch callgrind's instrumentation. `warm` more tasks are
    drained first, before `on`: first-use costs (lazy imports, first calls) stay out."""
    import redis.asyncio as aioredis

    from aiotask import App
    from aiotask.testing import start_worker

    ns = f"aiotinstr-{uuid.uuid4().hex[:8]}"
    # long leases: under valgrind a heartbeat may come late, and a takeover would run tasks twice
    app = App("bench", broker=redis_url, backend=redis_url, key_prefix=ns,
              visibility_timeout=600, worker_lost_after=600)  # fmt: skip

    @app.task(name="noop")
    async def noop() -> None:
        return None

    await app.connect()
    for i in range(0, n + warm, 1000):
        await noop.send_batch([() for _ in range(min(1000, n + warm - i))])
    async with start_worker(app, concurrency=100, prefetch=200, events=events) as worker:
        while worker.dispatcher.processed < warm:  # noqa: ASYNC110 (polls the worker's counter)
            await asyncio.sleep(0.01)
        on(worker)
        while worker.dispatcher.processed < n + warm:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        off()
    r = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in r.scan_iter(match=f"*{ns}*", count=1000)]
    for i in range(0, len(keys), 500):
        await r.unlink(*keys[i : i + 500])
    await r.aclose()
    await app.close()


def count(n: int, events: bool, redis_url: str, warm: int = 0) -> int:
    """Instructions of one drain of n tasks (a valgrind child), after `warm` uncounted ones."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
            f"--callgrind-out-file={out}",
            *(sys.executable, "-m", "benchmarks.drain_instructions"),
            *("--child", str(n), "--redis-url", redis_url, "--warm", str(warm)),
        ]
        if events:
            argv.append("--events")
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drain_instructions", description=__doc__)
    p.add_argument("--events", action="store_true", help="the worker records events (-E)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        asyncio.run(drain(args.child, args.events, args.redis_url, warm=args.warm))
        return 0
    totals = [count(n, args.events, args.redis_url) for n in SIZES]
    per_task = (totals[1] - totals[0]) / (SIZES[1] - SIZES[0])
    label = "events on" if args.events else "events off"
    print(f"[instructions] {label}: {totals} for {SIZES} tasks; {per_task:,.0f} per task")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
