"""A large backlog on Redis: worker RSS while it drains, Redis memory per queued task, drain time.

    .venv-bench/bin/python -m benchmarks.backlog [--tasks 1000000] [--batch 1000]
                                                 [--budget 1800] [--out backlog.json]

About 3-5 minutes for 1,000,000 on a loaded 2-core machine (docs/scaling.md has the figures).

Runs on a redis-server of its own (free port, temp dir, no persistence; stopped by its PID),
so `used_memory` counts this run's keys only. This process enqueues --tasks no-op tasks with
`send_batch` (--batch per pipelined publish, as the harness's enqueue), reading `INFO memory`
before and after: (after - before) / tasks is what one queued task costs the server. Then one
`aiotask worker` starts as the harness starts it (`-c 100 -P <cores> --prefetch 200`, the
harness's task module, Redis broker and results) and drains the queue while this process reads
every second the worker's VmRSS (/proc/PID/status; also the sum over its children, the process
pool) and the queue depth (ready + leased, the broker's queue_stats). The worker holds at most
its --prefetch (200) messages, so its RSS should not follow the queue's length: the table
shows it at 0 (the first sample after the depth fell), 25, 50, 75 and 100% of the drain, and
its maximum. Drain time runs from the worker's start
(its start-up included) to an empty queue; the rate divides the tasks by it. Results are
stored (24 h expiry, the default), so Redis's memory after the drain is the results'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from aiotask import App
from benchmarks.common import BROKER_ENV, NS_ENV, REDIS_ENV
from benchmarks.frameworks import BENCH_PY, ROOT, aiotask_worker
from benchmarks.harness import compile_bytecode, spawn, stop
from tests.servers import PrivateRedis

MARKS = (0, 25, 50, 75, 100)


def rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every child, grandchild... of `pid` (from /proc/PID/task/TID/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


async def memory(r: aioredis.Redis) -> dict[str, int]:
    info = await r.info("memory")
    keys = ("used_memory", "used_memory_dataset", "used_memory_rss")
    return {k: int(info[k]) for k in keys}


async def streams_bytes(r: aioredis.Redis) -> tuple[int, int]:
    """(MEMORY USAGE summed over every stream key, keys in the database): after the drain the
    rest of used_memory is the stored results."""
    total = 0
    async for key in r.scan_iter(count=10_000, _type="stream"):
        total += int(await r.memory_usage(key, samples=0) or 0)
    return total, int(await r.dbsize())


async def depth(app: App, queue: str) -> int:
    """Messages still to run: ready plus leased (prefetched, not yet acknowledged)."""
    (stats,) = await app.broker.queue_stats([queue])
    return stats.ready + (stats.in_flight or 0) + (stats.delayed or 0)


async def enqueue(noop: Any, n: int, batch: int) -> tuple[float, list[float]]:
    """Seconds to send n tasks, and the rate of each tenth (does it slow as the queue grows?)."""
    t0 = time.perf_counter()
    sent, step = 0, max(n // 10, batch)
    next_mark, last_t, last_sent, tenths = step, t0, 0, []
    while sent < n:
        size = min(batch, n - sent)
        await noop.send_batch([() for _ in range(size)])
        sent += size
        if sent >= next_mark or sent == n:
            next_mark += step
            now = time.perf_counter()
            tenths.append((sent - last_sent) / (now - last_t))
            last_t, last_sent = now, sent
            print(f"  enqueued {sent:>10,}  this tenth {tenths[-1]:8.0f} tasks/s", flush=True)
    return time.perf_counter() - t0, tenths


async def drain(
    app: App, queue: str, n: int, env: dict[str, str], log: Path, budget: float
) -> tuple[list[dict[str, float]], float, bool]:
    """Start the worker, sample it every second until the queue is empty; (samples, seconds,
    drained)."""
    compile_bytecode({BENCH_PY})  # as the harness: its RSS is that of an installed aiotask
    argv = aiotask_worker(BENCH_PY, "drain", env[NS_ENV])
    proc = await spawn(argv, env, log, pipes=False)
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    drained = False
    try:
        while True:
            left = await depth(app, queue)
            now = time.perf_counter() - t0
            main_kib = rss_kib(proc.pid)
            tree_kib = main_kib + sum(rss_kib(p) for p in descendants(proc.pid))
            samples.append({"t": now, "depth": left, "rss_kib": main_kib, "tree_kib": tree_kib})
            if left == 0:
                drained = True
                break
            if proc.returncode is not None:
                raise RuntimeError(f"the worker exited ({proc.returncode}); see {log}")
            if now > budget:
                break
            if len(samples) % 30 == 1:
                print(
                    f"  t={now:6.0f}s  depth {left:>10,}  worker RSS {main_kib / 1024:6.1f} MiB"
                    f"  (tree {tree_kib / 1024:6.1f})",
                    flush=True,
                )
            await asyncio.sleep(1.0)
        return samples, time.perf_counter() - t0, drained
    finally:
        await stop(proc)


def at_marks(samples: list[dict[str, float]], n: int) -> dict[int, dict[str, float]]:
    """The first sample at or past each share of the drain (0%: the first sample whose depth
    fell below n, i.e. the worker had begun)."""
    out: dict[int, dict[str, float]] = {}
    for pct in MARKS:
        target = n - n * pct / 100
        for s in samples:
            if (s["depth"] < n if pct == 0 else s["depth"] <= target) and s["rss_kib"]:
                out[pct] = s
                break
    return out


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = PrivateRedis(workdir)
    server.start()
    ns = f"backlog-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        **{BROKER_ENV: "redis", REDIS_ENV: server.url, NS_ENV: ns},
    )
    r = aioredis.Redis.from_url(server.url)
    app = App("bench", broker=server.url, backend=server.url, key_prefix=ns)

    @app.task(name="noop")  # the harness's task module's no-op, by name
    async def noop() -> None:
        return None

    try:
        async with app:
            queue = app.conf.default_queue
            before = await memory(r)
            print(f"enqueueing {args.tasks:,} no-op tasks, batches of {args.batch:,}", flush=True)
            enqueue_s, tenths = await enqueue(noop, args.tasks, args.batch)
            queued = await memory(r)
            per_task = (queued["used_memory"] - before["used_memory"]) / args.tasks
            print(f"queued: {per_task:.0f} bytes per task in used_memory; draining", flush=True)
            samples, drain_s, drained = await drain(
                app, queue, args.tasks, env, workdir / "worker.log", args.budget
            )
            after = await memory(r)
            after_streams, after_keys = await streams_bytes(r)
    finally:
        await r.aclose()
        server.kill()
    done = args.tasks - int(samples[-1]["depth"])
    marks = at_marks(samples, args.tasks)
    return {
        "tasks": args.tasks,
        "batch": args.batch,
        "worker": " ".join(aiotask_worker(BENCH_PY, "drain", ns)[1:]),
        "enqueue_s": enqueue_s,
        "enqueue_per_s": args.tasks / enqueue_s,
        "enqueue_per_s_by_tenth": tenths,
        "redis_before": before,
        "redis_queued": queued,
        "redis_after_drain": after,
        "streams_bytes_after_drain": after_streams,
        "keys_after_drain": after_keys,
        "bytes_per_queued_task": per_task,
        "dataset_bytes_per_queued_task": (
            queued["used_memory_dataset"] - before["used_memory_dataset"]
        )
        / args.tasks,
        "drained": drained,
        "drain_s": drain_s,
        "drained_tasks": done,
        "drain_per_s": done / drain_s,
        "seconds_at": {str(p): s["t"] for p, s in marks.items()},
        "rss_mib_at": {str(p): s["rss_kib"] / 1024 for p, s in marks.items()},
        "tree_mib_at": {str(p): s["tree_kib"] / 1024 for p, s in marks.items()},
        "rss_mib_max": max(s["rss_kib"] for s in samples) / 1024,
        "tree_mib_max": max(s["tree_kib"] for s in samples) / 1024,
        "load_avg": os.getloadavg(),
        "samples": samples,
    }


def table(res: dict[str, Any]) -> str:
    mib = 2**20
    rows = [
        ("tasks", f"{res['tasks']:,}"),
        ("enqueue (send_batch)", f"{res['enqueue_s']:.1f} s, {res['enqueue_per_s']:,.0f}/s"),
        (
            "Redis used_memory: before / queued / drained",
            f"{res['redis_before']['used_memory'] / mib:.1f} / "
            f"{res['redis_queued']['used_memory'] / mib:.1f} / "
            f"{res['redis_after_drain']['used_memory'] / mib:.1f} MiB",
        ),
        ("Redis bytes per queued task", f"{res['bytes_per_queued_task']:.0f}"),
        (
            "after the drain: streams / keys (results)",
            f"{res['streams_bytes_after_drain'] / mib:.2f} MiB / {res['keys_after_drain']:,}",
        ),
    ]
    for pct in MARKS:
        if str(pct) in res["rss_mib_at"]:
            rss, tree = res["rss_mib_at"][str(pct)], res["tree_mib_at"][str(pct)]
            label = f"worker RSS at {pct}% drained (t={res['seconds_at'][str(pct)]:.0f} s)"
            rows.append((label, f"{rss:.1f} MiB (tree {tree:.1f})"))
    rows.append(
        ("worker RSS max", f"{res['rss_mib_max']:.1f} MiB (tree {res['tree_mib_max']:.1f})")
    )
    state = "" if res["drained"] else f" (budget reached: {res['drained_tasks']:,} drained)"
    rows.append(
        ("drain (worker start to empty)", f"{res['drain_s']:.0f} s, {res['drain_per_s']:,.0f}/s")
    )
    lines = ["| backlog on a private Redis | |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000, help="tasks per send_batch")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds of draining")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backlog") as tmp:
        res = asyncio.run(run(args, Path(tmp)))
    print(table(res))
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
