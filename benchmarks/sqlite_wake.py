"""Round trip on the embedded default (SQLite) across two processes, with and without doorbells.

    .venv/bin/python -m benchmarks.sqlite_wake [--samples 40] [--gap 0.5] [--rounds 3]
        [--redis redis://127.0.0.1:6379/0]

A worker process and this producer share one SQLite file. Each sample sends a no-op task and
waits for its result; `busy` samples follow each other at once, `idle` samples wait `--gap`
seconds first (long enough for every poll backoff to reach its maximum). "bells off" blocks the
doorbell directory with a plain file, which is the documented fallback (polling only), so both
modes run the same code otherwise. With --redis, the same producer and worker also run on
Redis (a unique key prefix, its keys deleted afterwards), for the ratio to Redis in the same
run. Rounds alternate the modes; the figures are medians.
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

from aiotask import App, _sqlite_wake
from benchmarks.harness import cleanup_redis

TASKS = textwrap.dedent(
    """
    from aiotask import App
    app = App("wakebench")

    @app.task(name="noop")
    async def noop() -> None:
        return None
    """
)


async def _samples(url: str, n: int, gap: float, prefix: str) -> list[float]:
    out = []
    async with App("wakebench", broker=url, backend=url, key_prefix=prefix) as app:
        await (await app.send_task("noop")).get(timeout=30)  # warm both sides
        for _ in range(n):
            if gap:
                await asyncio.sleep(gap)
            t0 = time.perf_counter()
            await (await app.send_task("noop")).get(timeout=30)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def _measure(workdir: Path, mode: str, samples: int, gap: float, redis: str) -> dict[str, float]:
    """mode: "on" (SQLite with doorbells), "off" (SQLite, polling only) or "redis"."""
    db = workdir / f"wake-{mode}-{time.monotonic_ns()}.db"
    url = redis if mode == "redis" else f"sqlite:///{db}"
    prefix = f"wakebench-{uuid.uuid4().hex[:12]}"
    blocker = Path(_sqlite_wake.wake_dir(str(db)))
    if mode == "off":
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("doorbells off for this measurement")
    env = dict(
        os.environ,
        AIOTASK_BROKER_URL=url,
        AIOTASK_RESULT_BACKEND=url,
        AIOTASK_KEY_PREFIX=prefix,
        PYTHONPATH=str(workdir),
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "wake_tasks:app", "-l", "WARNING"],
        cwd=workdir,
        env=env,
    )
    try:
        busy = asyncio.run(_samples(url, samples, 0.0, prefix))
        idle = asyncio.run(_samples(url, max(samples // 4, 5), gap, prefix))
    finally:
        worker.terminate()
        worker.wait(30)
        if mode == "off":
            blocker.unlink()
        if mode == "redis":
            asyncio.run(cleanup_redis(redis, prefix))
    return {"busy_p50_ms": statistics.median(busy), "idle_p50_ms": statistics.median(idle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="", help="also measure aiotask on this Redis")
    args = parser.parse_args()
    modes = ("on", "off", "redis") if args.redis else ("on", "off")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="wakebench") as tmp:
        workdir = Path(tmp)
        (workdir / "wake_tasks.py").write_text(TASKS)
        for _ in range(args.rounds):
            for mode in modes:
                results[mode].append(_measure(workdir, mode, args.samples, args.gap, args.redis))
    redis_cols = (" Redis | SQLite/Redis |", "---:|---:|") if args.redis else ("", "")
    print(
        f"| round trip, worker in another process | bells on | bells off | on/off |{redis_cols[0]}"
    )
    print(f"|---|---:|---:|---:|{redis_cols[1]}")
    rows = (
        ("busy_p50_ms", "back to back, p50 ms"),
        ("idle_p50_ms", f"after {args.gap} s idle, p50 ms"),
    )
    for key, label in rows:
        on, off = (statistics.median(r[key] for r in results[m]) for m in ("on", "off"))
        line = f"| {label} | {on:.2f} | {off:.2f} | {on / off:.2f}x |"
        if args.redis:
            red = statistics.median(r[key] for r in results["redis"])
            line += f" {red:.2f} | {on / red:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
