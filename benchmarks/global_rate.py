"""A global rate limit shared by worker processes: the rate achieved, and other tasks' throughput.

    python -m benchmarks.global_rate [--url redis://127.0.0.1:6379/0] [--backend URL]
                                     [--workers 4] [--rate 50] [--seconds 20]

(`--backend`, the store of the budget, defaults to the broker's server/file; give one for
RabbitMQ, e.g. `--url amqp://guest:guest@127.0.0.1:5672// --backend redis://127.0.0.1:6379/0`.)

Starts `--workers` real `aiotask worker` processes. Phase 1: a burst of unlimited no-op tasks
alone (their baseline throughput). Phase 2: a saturating backlog of a task limited to `--rate`/s
with `rate_limit_scope="global"`, and the same burst of unlimited tasks behind it on the same
queue. Reports the limited task's starts per second over `--seconds` of steady state (as a
ratio of the limit) and the unlimited tasks' throughput during phase 2 as a ratio of the
baseline. Each task appends its start time to a log file. Whole-process figures on a shared
machine: ratios, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from benchmarks.harness import cleanup_redis

MODULE = textwrap.dedent(
    """
    import os, time
    from aiotask import App

    app = App("grbench")
    RATE = float(os.environ["BENCH_RATE"])

    def _log(kind: str) -> None:
        with open(os.environ["BENCH_LOG"], "a") as f:
            f.write(f"{kind} {time.time()}\\n")

    @app.task(name="gr.limited", rate_limit=RATE, rate_limit_scope="global")
    async def limited(i: int) -> None:
        _log("L")

    @app.task(name="gr.other")
    async def other(i: int) -> None:
        _log("O")
    """
)


def _times(log: Path, kind: str) -> list[float]:
    if not log.exists():
        return []
    return sorted(float(t) for k, t in (line.split() for line in log.read_text().splitlines())
                  if k == kind)  # fmt: skip


def _throughput(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def _wait_for(log: Path, kind: str, count: int, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = _times(log, kind)
        if len(times) >= count:
            return times
        await asyncio.sleep(0.2)
    raise SystemExit(f"only {len(_times(log, kind))} of {count} {kind} tasks ran in {timeout}s")


async def run(
    url: str, backend: str | None, workers: int, rate: float, seconds: float, others: int
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="grbench"))
    (tmp / "grbench_tasks.py").write_text(MODULE)
    log = tmp / "runs"
    prefix = f"grbench{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(AIOTASK_BROKER_URL=url, AIOTASK_KEY_PREFIX=prefix, BENCH_LOG=str(log),
               BENCH_RATE=str(rate), PYTHONPATH=str(tmp))  # fmt: skip
    if backend:
        env["AIOTASK_RESULT_BACKEND"] = backend
    os.environ.update(env)
    sys.path.insert(0, str(tmp))
    import grbench_tasks as tasks

    procs = _start_workers(tmp, env, workers)
    try:
        await asyncio.sleep(3.0)  # let the workers start
        app = tasks.app
        async with app:
            await tasks.other.send_batch([(i,) for i in range(others)])  # warm-up
            await _wait_for(log, "O", others, 120)
            await tasks.other.send_batch([(i,) for i in range(others)])
            base = _throughput((await _wait_for(log, "O", 2 * others, 120))[others:])

            backlog = int(rate * (seconds + 6))  # saturated for the whole window
            await tasks.limited.send_batch([(i,) for i in range(backlog)])
            await asyncio.sleep(1.0)  # the limited backlog is being worked on
            await tasks.other.send_batch([(i,) for i in range(others)])
            during = _throughput((await _wait_for(log, "O", 3 * others, 120))[2 * others :])
            limited = await _wait_for(log, "L", backlog, seconds + 120)
        start = limited[0] + 1.0  # skip the first second (workers warming up)
        window = [t for t in limited if start <= t < start + seconds]
        achieved = len(window) / seconds
        worst = max(len([t for t in window if s <= t < s + 1.0]) for s in window)
        print(f"workers: {workers}, limit: {rate:g}/s global, window: {seconds:g} s")
        print(f"limited task: {achieved:.2f}/s = {achieved / rate:.3f} x the limit "
              f"(busiest 1 s window: {worst} starts)")  # fmt: skip
        print(f"other tasks: {during:.0f}/s beside the backlog vs {base:.0f}/s alone "
              f"= {during / base:.2f} x")  # fmt: skip
        per_second = [len([t for t in limited if s <= t - limited[0] < s + 1]) for s in
                      range(int(limited[-1] - limited[0]) + 1)]  # fmt: skip
        print("limited starts per second, from the first:", per_second)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        for store in {url, backend or url}:
            await _cleanup(store, prefix)


def _start_workers(tmp: Path, env: dict[str, str], n: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        with (tmp / f"worker-{i}.log").open("w") as out:
            argv = [sys.executable, "-m", "aiotask", "worker", "-A", "grbench_tasks:app"]
            procs.append(subprocess.Popen(argv, cwd=tmp, env=env, stderr=out))
    return procs


async def _cleanup(url: str, prefix: str) -> None:
    if url.startswith("amqp"):
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for queue in (f"{prefix}.default", f"{prefix}.default.dead"):
                await channel.queue_delete(queue)
        return
    if url.startswith("redis"):
        await cleanup_redis(url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--others", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.backend, args.workers, args.rate, args.seconds, args.others))


if __name__ == "__main__":
    main()
