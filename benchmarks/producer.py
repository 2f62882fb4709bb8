"""The producer process of one measurement: `python -m benchmarks.producer FRAMEWORK WORKLOAD ...`.

It loads `benchmarks.workloads.<framework>` (its `make_adapter()`), runs one workload against a
worker that the harness starts in another process, and talks to the harness over pipes: it
prints `@@{json}` event lines on stdout and, at sync points, waits for a `go` line on stdin.
Every loop is bounded by a count and by the --timeout deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
import traceback
from typing import Any

from benchmarks.common import SLEEP_S, Adapter, NotSupported, concurrency, percentile

POLL_FIRST_S = 0.005
POLL_S = 0.02
CHECK_CHUNK = 1000
MIN_SAMPLES = 30


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.at:
            raise TimeoutError(f"timed out while {what}")


def emit(event: str, **data: Any) -> None:
    sys.stdout.write("@@" + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def wait_go(deadline: Deadline) -> None:
    left = max(1.0, deadline.at - time.monotonic())
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), left)
    if line.strip() != "go":
        raise RuntimeError(f"harness said {line.strip()!r}, not 'go'")


async def wait_all(adapter: Adapter, handles: list[Any], deadline: Deadline) -> dict[str, float]:
    """Poll until every handle is done, front first (tasks finish roughly in order).

    Returns the time the first completion was seen, how many were done then, and the end time.
    """
    remaining = list(handles)
    t_first: float | None = None
    done_at_first = 0
    total = len(handles)
    while remaining:
        deadline.check(f"waiting for {len(remaining)} of {total} tasks")
        chunk = remaining[:CHECK_CHUNK]
        flags = await adapter.done_flags(chunk)
        still = [h for h, done in zip(chunk, flags, strict=True) if not done]
        remaining = still + remaining[CHECK_CHUNK:]
        if t_first is None and len(remaining) < total:
            t_first = time.perf_counter()
            done_at_first = total - len(remaining)
        if remaining:
            await asyncio.sleep(POLL_FIRST_S if t_first is None else POLL_S)
    t_end = time.perf_counter()
    return {
        "t_first": t_first if t_first is not None else t_end,
        "done_at_first": float(done_at_first),
        "t_end": t_end,
    }


async def warm_up(adapter: Adapter, deadline: Deadline, count: int) -> None:
    """Wait for the worker to answer (it may still be booting), then a few more round trips.

    Each adapter's round trip gives up on its own after about 10 s; it is never cancelled from
    outside, because some clients (SAQ's pub/sub multiplexer) do not survive a cancellation.
    """
    while True:
        deadline.check("waiting for the worker's first answer")
        try:
            await adapter.roundtrip()
            break
        except TimeoutError:
            continue
    for _ in range(count):
        await adapter.roundtrip()


async def run_enqueue(adapter: Adapter, args: argparse.Namespace, deadline: Deadline) -> None:
    await adapter.send("noop")  # connect, load scripts: not counted
    t0 = time.perf_counter()
    for _ in range(args.n_one):
        await adapter.send("noop")
    one = time.perf_counter() - t0
    deadline.check("enqueueing one at a time")
    t0 = time.perf_counter()
    left = args.n
    while left > 0:
        deadline.check("enqueueing in batches")
        size = min(args.batch, left)
        await adapter.send_many("noop", size)
        left -= size
    batch = time.perf_counter() - t0
    emit(
        "result",
        enqueue_one=args.n_one / one,
        enqueue_batch=args.n / batch,
        batch_note=adapter.batch_note,
    )


async def enqueue_all(adapter: Adapter, kind: str, n: int, batch: int, dl: Deadline) -> list[Any]:
    handles: list[Any] = []
    while len(handles) < n:
        dl.check(f"enqueueing {kind}")
        handles.extend(await adapter.send_many(kind, min(batch, n - len(handles))))
    return handles


async def run_drain(adapter: Adapter, args: argparse.Namespace, deadline: Deadline) -> None:
    handles = await enqueue_all(adapter, "noop", args.n, args.batch, deadline)
    emit("enqueued", count=len(handles))
    await wait_go(deadline)  # the harness has just spawned the worker
    t_go = time.perf_counter()
    marks = await wait_all(adapter, handles, deadline)
    span = marks["t_end"] - marks["t_first"]
    counted = args.n - marks["done_at_first"]
    emit(
        "result",
        drain=counted / span if span > 0 and counted > 0 else float("nan"),
        boot_s=marks["t_first"] - t_go,
        mark_first=marks["t_first"],
        mark_end=marks["t_end"],
    )


async def run_latency(adapter: Adapter, args: argparse.Namespace, deadline: Deadline) -> None:
    await warm_up(adapter, deadline, 10)
    emit("warm")
    await wait_go(deadline)  # the harness has measured the idle worker's memory
    samples: list[float] = []
    stop_at = time.monotonic() + args.budget
    for _ in range(args.n):
        deadline.check("measuring round trips")
        if len(samples) >= MIN_SAMPLES and time.monotonic() > stop_at:
            break  # a slow framework gets fewer samples, not a longer run
        t0 = time.perf_counter()
        await adapter.roundtrip()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    emit(
        "result",
        p50_ms=percentile(samples, 50),
        p90_ms=percentile(samples, 90),
        p99_ms=percentile(samples, 99),
        samples=len(samples),
    )


async def run_io(adapter: Adapter, args: argparse.Namespace, deadline: Deadline) -> None:
    await warm_up(adapter, deadline, 5)
    t0 = time.perf_counter()
    handles = await enqueue_all(adapter, "sleep50", args.n, args.batch, deadline)
    marks = await wait_all(adapter, handles, deadline)
    elapsed = marks["t_end"] - t0
    ideal = args.n * SLEEP_S / concurrency()
    emit("result", io_s=elapsed, io_pct=100 * ideal / elapsed)


async def run_cpu(adapter: Adapter, args: argparse.Namespace, deadline: Deadline) -> None:
    await warm_up(adapter, deadline, 2)
    # start the process pool: a first few CPU tasks, not counted
    await wait_all(adapter, await adapter.send_many("cpu", 4), deadline)
    t0 = time.perf_counter()
    handles = await enqueue_all(adapter, "cpu", args.n, args.batch, deadline)
    marks = await wait_all(adapter, handles, deadline)
    emit("result", cpu=args.n / (marks["t_end"] - t0))


async def run_chord(adapter: Adapter, args: argparse.Namespace, deadline: Deadline) -> None:
    await warm_up(adapter, deadline, 5)
    t0 = time.perf_counter()
    await asyncio.wait_for(adapter.chord(args.n), max(1.0, deadline.at - time.monotonic()))
    emit("result", chord_s=time.perf_counter() - t0)


RUNNERS = {
    "enqueue": run_enqueue,
    "drain": run_drain,
    "latency": run_latency,
    "io": run_io,
    "cpu": run_cpu,
    "chord": run_chord,
}


async def main(args: argparse.Namespace) -> None:
    module = importlib.import_module(f"benchmarks.workloads.{args.module}")
    adapter: Adapter = module.make_adapter()
    deadline = Deadline(args.timeout)
    await adapter.start()
    try:
        await RUNNERS[args.workload](adapter, args, deadline)
    except NotSupported as exc:
        emit("skipped", reason=str(exc))
    finally:
        await adapter.close()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.producer")
    p.add_argument("module", help="a module under benchmarks.workloads, e.g. celery_app")
    p.add_argument("workload", choices=sorted(RUNNERS))
    p.add_argument("--n", type=int, required=True, help="tasks (or samples, chord size)")
    p.add_argument("--n-one", type=int, default=0, help="enqueue: tasks sent one at a time")
    p.add_argument("--batch", type=int, default=1000, help="tasks per batched send")
    p.add_argument("--budget", type=float, default=30.0, help="latency: seconds of sampling")
    p.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse(sys.argv[1:])))
    except Exception as exc:
        traceback.print_exc()
        emit("error", error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from exc
