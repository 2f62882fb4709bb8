"""Message signing's cost: drain rate and round-trip p50 with signing off vs on, in one run.

    .venv/bin/python -m benchmarks.signing_ratio                 # ~1 min on Redis
    .venv/bin/python -m benchmarks.signing_ratio --n 20000 --pairs 4 --trips 500

Three figures, each from alternating off/on runs in this process (so both see the same
machine load):

- the encode + decode cost of one message on the wire (CPU only, no broker): µs per message;
- drain: N no-op tasks pre-enqueued on Redis, then a worker (start_worker, -c 100, prefetch
  200, results stored) times until every one ran; on/off by wall clock and by CPU time of
  this process (target >= 0.95); the same on memory:// by CPU time (no server: the worker's
  own cost per task, where signing is the largest share);
- round trip: one task at a time, `send` then `get`, p50 over `--trips` (target: on - off
  <= 0.05 ms), on memory:// (no network: the signing cost alone, steady) and on Redis.

"on" is `signing_keys={"k1": <32 characters>}` on producer and worker (HMAC-SHA256 over the
frame, verified before decoding). Keys live under a unique prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
import uuid

from aiotask import App
from aiotask.protocol import Message
from aiotask.testing import start_worker
from benchmarks.common import redis_url
from benchmarks.harness import cleanup_redis

KEY = {"k1": "benchmark-signing-key-0123456789ab"}


def make_app(prefix: str, signed: bool, url: str = "") -> App:
    extra = {"signing_keys": KEY} if signed else {}
    url = url or redis_url()
    app = App("sig", broker=url, backend=url, key_prefix=prefix, **extra)

    @app.task(name="noop")
    async def noop(x: int = 0) -> int:
        return x

    return app


def wire_cost(signed: bool, number: int = 20000) -> float:
    """µs to encode and decode one typical small message."""
    wire = make_app("unused", signed).wire
    message = Message(uuid.uuid4().hex, "proj.resize", ["s3://bucket/key.png", 640, 480], {})
    body = wire.encode(message)
    best = min(  # CPU time of this thread: other processes' load does not count
        timeit.repeat(
            lambda: wire.decode(wire.encode(message)),
            number=number,
            repeat=5,
            timer=time.thread_time,
        )
    )
    assert wire.decode(body) == message
    return best / number * 1e6


async def drain(n: int, signed: bool, url: str = "") -> tuple[float, float]:
    """Tasks per second of wall clock, and per CPU second of this process (steadier on a
    shared machine: other processes' load does not count). `url="memory://"`: no server, so
    the worker's own CPU per task, where the signing cost is the largest share."""
    prefix = f"sig-{uuid.uuid4().hex[:8]}"
    app = make_app(prefix, signed, url)
    noop = app.tasks["noop"]
    async with app:
        for start in range(0, n, 1000):
            await noop.send_batch([noop.call() for _ in range(min(1000, n - start))])
        began, cpu = time.perf_counter(), time.process_time()
        async with start_worker(app, concurrency=100, prefetch=200) as worker:
            while worker.dispatcher.processed < n:  # noqa: ASYNC110 - a cheap poll
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - began
            cpu = time.process_time() - cpu
        if not url:
            await _cleanup(prefix)
    return n / elapsed, n / cpu


async def round_trips(trips: int, signed: bool, url: str = "") -> float:
    """p50 of send-then-get, in ms."""
    prefix = f"sig-{uuid.uuid4().hex[:8]}"
    app = make_app(prefix, signed, url)
    noop = app.tasks["noop"]
    samples: list[float] = []
    async with app, start_worker(app, concurrency=10):
        for i in range(trips + 20):
            began = time.perf_counter()
            assert await (await noop.send(i)).get(timeout=10) == i
            if i >= 20:  # the first few warm connections and caches
                samples.append((time.perf_counter() - began) * 1000)
    if not url:
        await _cleanup(prefix)
    return statistics.median(samples)


async def local_drains(pairs: int, n: int) -> None:
    """Drain on memory:// by CPU time, off and on back to back, `pairs` times: the ratio of
    each pair, then their median and range (a shared machine's load moves single runs)."""
    await drain(min(n, 2000), False, "memory://")  # warm-up
    ratios = []
    for i in range(pairs):
        rate: dict[bool, float] = {}
        for mode in (False, True) if i % 2 == 0 else (True, False):
            rate[mode] = (await drain(n, mode, "memory://"))[1]
        ratios.append(rate[True] / rate[False])
        print(
            f"memory:// drain pair {i + 1}: off {rate[False]:.0f}, on {rate[True]:.0f} tasks "
            f"per CPU second: on/off {ratios[-1]:.3f}"
        )
    print(
        f"drain on memory:// (cpu): on/off median {statistics.median(ratios):.3f}, range "
        f"{min(ratios):.3f}-{max(ratios):.3f} over {pairs} pairs (target >= 0.95)"
    )


async def _cleanup(prefix: str) -> None:
    await cleanup_redis(redis_url(), prefix)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.signing_ratio")
    parser.add_argument("--n", type=int, default=5000, help="tasks per drain run")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs of each figure")
    parser.add_argument("--trips", type=int, default=300, help="round trips per run")
    parser.add_argument("--local-pairs", type=int, default=8, help="memory:// drain pairs")
    parser.add_argument("--local-n", type=int, default=10000, help="tasks per memory:// drain")
    args = parser.parse_args()
    cost = {mode: wire_cost(mode) for mode in (False, True)}
    print(
        f"wire encode+decode: off {cost[False]:.2f} µs, on {cost[True]:.2f} µs "
        f"(+{cost[True] - cost[False]:.2f} µs = +{(cost[True] - cost[False]) / 1000:.4f} ms)"
    )
    local: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.pairs):
        for mode in (False, True) if i % 2 == 0 else (True, False):
            local[mode].append(await round_trips(args.trips, mode, "memory://"))
    p_off, p_on = statistics.median(local[False]), statistics.median(local[True])
    print(
        f"round trip p50 on memory:// (no network, the signing cost alone): off {p_off:.3f} ms, "
        f"on {p_on:.3f} ms: on - off = {p_on - p_off:+.3f} ms (target: growth <= 0.05 ms)"
    )
    await local_drains(args.local_pairs, args.local_n)
    await drain(min(args.n, 2000), False)  # warm-up: imports, scripts, connections
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu_rates: dict[bool, list[float]] = {False: [], True: []}
    p50s: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for mode in order:
            rate, cpu_rate = await drain(args.n, mode)
            rates[mode].append(rate)
            cpu_rates[mode].append(cpu_rate)
            p50s[mode].append(await round_trips(args.trips, mode))
            print(
                f"pair {i + 1} signing {'on ' if mode else 'off'}: drain {rate:7.0f} tasks/s "
                f"({cpu_rate:7.0f} per CPU second), round trip p50 {p50s[mode][-1]:.3f} ms"
            )
    for label, table in (("drain (wall)", rates), ("drain (cpu)", cpu_rates)):
        off, on = statistics.median(table[False]), statistics.median(table[True])
        print(f"{label}: median off {off:.0f}/s, on {on:.0f}/s: on/off = {on / off:.3f}")
    p_off, p_on = statistics.median(p50s[False]), statistics.median(p50s[True])
    print(
        f"round trip p50 on Redis: off {p_off:.3f} ms, on {p_on:.3f} ms: on - off = "
        f"{p_on - p_off:+.3f} ms, on/off = {p_on / p_off:.3f} (target: growth <= 0.05 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
