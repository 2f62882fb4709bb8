"""Round trip on the embedded default (SQLite) across two processes, with and without doorbells.

    .venv/bin/python -m benchmarks.sqlite_wake [--samples 40] [--gap 0.5] [--rounds 3]

A worker process and this producer share one SQLite file. Each sample sends a no-op task and
waits for its result; `busy` samples follow each other at once, `idle` samples wait `--gap`
seconds first (long enough for every poll backoff to reach its maximum). "bells off" blocks the
doorbell directory with a plain file, which is the documented fallback (polling only), so both
modes run the same code otherwise. Rounds alternate the modes; the figures are medians.
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
from pathlib import Path

from aiotask import App, _sqlite_wake

TASKS = textwrap.dedent(
    """
    from aiotask import App
    app = App("wakebench")

    @app.task(name="noop")
    async def noop() -> None:
        return None
    """
)


async def _samples(url: str, n: int, gap: float) -> list[float]:
    out = []
    async with App("wakebench", broker=url) as app:
        await (await app.send_task("noop")).get(timeout=30)  # warm both sides
        for _ in range(n):
            if gap:
                await asyncio.sleep(gap)
            t0 = time.perf_counter()
            await (await app.send_task("noop")).get(timeout=30)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def _measure(workdir: Path, bells: bool, samples: int, gap: float) -> dict[str, float]:
    db = workdir / f"wake-{'on' if bells else 'off'}-{time.monotonic_ns()}.db"
    url = f"sqlite:///{db}"
    blocker = Path(_sqlite_wake.wake_dir(str(db)))
    if not bells:
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("doorbells off for this measurement")
    env = dict(os.environ, AIOTASK_BROKER_URL=url, PYTHONPATH=str(workdir))
    worker = subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "wake_tasks:app", "-l", "WARNING"],
        cwd=workdir,
        env=env,
    )
    try:
        busy = asyncio.run(_samples(url, samples, 0.0))
        idle = asyncio.run(_samples(url, max(samples // 4, 5), gap))
    finally:
        worker.terminate()
        worker.wait(30)
        if not bells:
            blocker.unlink()
    return {"busy_p50_ms": statistics.median(busy), "idle_p50_ms": statistics.median(idle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="wakebench") as tmp:
        workdir = Path(tmp)
        (workdir / "wake_tasks.py").write_text(TASKS)
        for _ in range(args.rounds):
            for bells in (True, False):
                results[bells].append(_measure(workdir, bells, args.samples, args.gap))
    print("| SQLite round trip, worker in another process | bells on | bells off | on/off |")
    print("|---|---:|---:|---:|")
    rows = (("busy_p50_ms", "back to back, p50 ms"), ("idle_p50_ms", "after idle, p50 ms"))
    for key, label in rows:
        on = statistics.median(r[key] for r in results[True])
        off = statistics.median(r[key] for r in results[False])
        print(f"| {label} | {on:.2f} | {off:.2f} | {on / off:.2f}x |")


if __name__ == "__main__":
    main()
