"""Where one PostgreSQL round trip (send -> worker runs a no-op -> result back) spends its time.

    .venv/bin/python -m benchmarks.postgres_timeline [--n 150] [--pause 0.02]

One producer (this process) sends one task at a time and waits for its result; one worker
(`aiotask worker -c 100 --prefetch 200`, a process) runs it. Both mark the steps of each
round trip with `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux: one clock for both
processes) by wrapping the broker's and backend's SQL functions, the NOTIFY callbacks, the
settler and the task. Prints the median (p10, p90) of each stage: the publish INSERT (its
commit waits for the WAL flush), its NOTIFY reaching the worker, the claim, the task, the
result store (WAL flush too), its NOTIFY reaching the waiter. A measurement tool: the
wrappers cost a few microseconds each.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

_fd: int | None = None
ROOT = str(Path(__file__).resolve().parent.parent)

#: (stage, from mark, to mark); marks are "<P|W> <name>" (producer, worker)
STAGES = (
    ("producer: send() to INSERT", "P send.start", "P insert.start"),
    ("INSERT (commit + WAL flush)", "P insert.start", "P insert.end"),
    ("INSERT start to worker NOTIFY", "P insert.start", "W broker_notified"),
    ("NOTIFY to claim start", "W broker_notified", "W claim.start"),
    ("claim statement", "W claim.start", "W claim.end"),
    ("claim end to task start", "W claim.end", "W task"),
    ("task to result store start", "W task", "W upsert.start"),
    ("store start to waiter NOTIFY", "W upsert.start", "P result_notified"),
    ("store statement (+ WAL flush)", "W upsert.start", "W upsert.end"),
    ("waiter NOTIFY to get() return", "P result_notified", "P get.end"),
    ("waiter's subscribe-time read", "P fetch.start", "P fetch.end"),
    ("round trip", "P send.start", "P get.end"),
)

APP_MODULE = textwrap.dedent(
    """
    import os
    from aiotask import App
    from benchmarks import postgres_timeline as tl

    tl.install()
    tl.plan_cache_mode(os.environ.get("BENCH_PLAN_CACHE_MODE", ""))
    url = os.environ["BENCH_URL"]
    app = App("pgtimeline", broker=url, backend=url, key_prefix=os.environ["BENCH_PREFIX"])

    @app.task(name="noop")
    async def noop(i: int) -> int:
        tl.mark("task")
        return i
    """
)


def mark(name: str) -> None:
    """Append `<ns> <tag> <name>` to $TRACE_FILE (one write, O_APPEND: safe across processes)."""
    global _fd
    path = os.environ.get("TRACE_FILE")
    if not path:
        return
    if _fd is None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    tag = os.environ.get("TRACE_TAG", "?")
    os.write(_fd, f"{time.perf_counter_ns()} {tag} {name}\n".encode())


def _timed(obj: Any, attr: str, name: str) -> None:
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        mark(name + ".start")
        try:
            return await fn(*args, **kwargs)
        finally:
            mark(name + ".end")

    setattr(obj, attr, timed)


def _marked(obj: Any, attr: str, name: str) -> None:
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def marked(*args: Any, **kwargs: Any) -> Any:
        mark(name)
        return fn(*args, **kwargs)

    setattr(obj, attr, marked)


def install() -> None:
    """Wrap the steps; before any broker or backend is made (NOTIFY callbacks are bound then)."""
    from aiotask.backends import _postgres_results as results
    from aiotask.backends.postgres import PostgresBackend
    from aiotask.brokers import _postgres_sql as q
    from aiotask.brokers.postgres import PostgresBroker
    from aiotask.worker.settle import Settler

    for mod, attr, name in (
        (q, "insert", "insert"),
        (q, "claim", "claim"),
        (q, "settle", "ack"),
        (results, "upsert", "upsert"),
        (results, "fetch", "fetch"),
        (Settler, "flush", "flush"),
    ):
        _timed(mod, attr, name)
    _marked(PostgresBroker, "_notified", "broker_notified")
    _marked(PostgresBackend, "_result_notified", "result_notified")
    _marked(Settler, "add", "settler_add")


def plan_cache_mode(mode: str) -> None:
    """Every PostgreSQL connection of this process with `plan_cache_mode = mode` (an
    experiment: force_generic_plan shows what re-planning each statement on each call costs;
    not safe in production, where a plan made for short queues would serve a backlog; the
    claims plan once per connection in functions made safe for it, aiotask/_postgres/claims.py)."""
    if not mode:
        return
    from aiotask import _postgres

    kwargs = _postgres.Database._connect_kwargs

    def with_mode(self: _postgres.Database) -> dict[str, Any]:
        return {**kwargs(self), "server_settings": {"plan_cache_mode": mode}}

    _postgres.Database._connect_kwargs = with_mode  # type: ignore[method-assign]


def report(trace: Path) -> None:
    marks = sorted(
        (int(ns), f"{tag} {name}")
        for ns, tag, name in (line.split(" ", 2) for line in trace.read_text().splitlines())
    )
    trips: list[dict[str, int]] = []
    started: dict[str, dict[str, int]] = {}  # "<tag> <name>" -> the trip its .start is in
    for ns, key in marks:
        if key == "P send.start":
            trips.append({})
        if not trips:
            continue
        trip = trips[-1]
        if key.endswith(".start"):
            started[key.removesuffix(".start")] = trip
        elif key.endswith(".end"):  # an end may come after the next trip began (an ack)
            trip = started.pop(key.removesuffix(".end"), trip)
        trip.setdefault(key, ns)
    print(f"{len(trips)} round trips; ms: median (p10, p90)")
    for label, a, b in STAGES:
        spans = sorted((t[b] - t[a]) / 1e6 for t in trips if a in t and b in t)
        if spans:
            p10, p90 = spans[len(spans) // 10], spans[len(spans) * 9 // 10]
            print(f"  {label:32s} {statistics.median(spans):7.3f} ({p10:.3f}, {p90:.3f})")


async def run(n: int, pause: float, workdir: Path, mode: str) -> Path:
    url = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    prefix = f"tl{uuid.uuid4().hex[:10]}"
    trace = workdir / "trace.txt"
    (workdir / "pgtimeline_app.py").write_text(APP_MODULE)
    os.environ.update(BENCH_URL=url, BENCH_PREFIX=prefix, TRACE_TAG="P")
    sys.path.insert(0, str(workdir))
    from pgtimeline_app import app, noop  # type: ignore[import-not-found]

    env = dict(os.environ, TRACE_FILE=str(trace), TRACE_TAG="W", PYTHONPATH=f"{workdir}:{ROOT}")
    if mode:
        env["BENCH_PLAN_CACHE_MODE"] = mode
    try:
        await _round_trips(app, noop, n, pause, workdir, env, trace)
    finally:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
        finally:
            await conn.close()
    return trace


async def _round_trips(
    app: Any, noop: Any, n: int, pause: float, workdir: Path, env: dict[str, str], trace: Path
) -> None:
    async with app:
        await noop.send(-1)  # connect, create the tables
        worker = await asyncio.to_thread(_start_worker, workdir, env)
        try:
            for i in range(30):  # warm up: pools, LISTEN, prepared statements
                await (await noop.send(i)).get(timeout=60)
            os.environ["TRACE_FILE"] = str(trace)
            print(f"load average at start: {os.getloadavg()}")
            for i in range(n):
                mark("send.start")
                handle = await noop.send(i)
                await handle.get(timeout=30)
                mark("get.end")
                if pause:
                    await asyncio.sleep(pause)
            print(f"load average at end:   {os.getloadavg()}")
        finally:
            os.environ.pop("TRACE_FILE", None)
            worker.terminate()
            await asyncio.to_thread(worker.wait)


def _start_worker(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The worker, its log in a file (a pipe nobody reads would fill up and stall it)."""
    with (workdir / "worker.log").open("wb") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "aiotask", "worker", "-A", "pgtimeline_app:app"),
                *("-c", "100", "--prefetch", "200", "-l", "WARNING"),
            ],
            env=env,
            cwd=workdir,
            stderr=out,
            stdout=subprocess.DEVNULL,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=150, help="round trips")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between round trips")
    parser.add_argument(
        "--worker-plan-cache-mode",
        default="",
        help="an experiment: the worker's connections with this plan_cache_mode "
        "(force_generic_plan: no statement is planned again on each call; the claims run in "
        "functions that plan once per connection anyway, aiotask/_postgres/claims.py)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = asyncio.run(run(args.n, args.pause, Path(tmp), args.worker_plan_cache_mode))
        report(trace)


if __name__ == "__main__":
    main()
