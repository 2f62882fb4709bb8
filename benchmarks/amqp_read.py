"""aiormq's stock read path against aiotask's (_rabbitmq_reader), on the shared RabbitMQ.

    python -m benchmarks.amqp_read                   # 5 alternating rounds: drain + round trip
    python -m benchmarks.amqp_read --instructions    # callgrind: instructions per task / trip

Modes: stock (aiormq's receiver, a task per delivery), reader (buffered frames), direct
(buffered frames and deliveries handed over in the channel reader: what aiotask does). Each
measurement is a child process (`--child`) that sets `_rabbitmq_reader.ENABLED` and `DIRECT`
for its mode, so the modes alternate in one run. A drain
enqueues no-op tasks on a unique queue, then one in-process Worker (-c 100, prefetch 200)
drains them: tasks/s and process CPU per task over the drain. A round trip is one
`send` + `get` after another against an in-process worker (p50, p90); `--what tripx` (child
only) the same against a worker in its own process, as in the harness. Results go to Redis.
With --instructions each runs under `valgrind --tool=callgrind --instr-atstart=no`: a drain
counted from the worker's start to the last task, round trips (client and worker in one
process) from the first to the last; two sizes each, the difference per task or per trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = "redis://127.0.0.1:6379/0"


def instrument(state: str) -> None:
    """Switch callgrind's counting on or off in this process (blocking: nothing else runs)."""
    argv = ["callgrind_control", "-i", state, str(os.getpid())]
    subprocess.run(argv, check=True, capture_output=True)


def make_app(mode: str, ns: str) -> tuple[Any, Any]:
    """The app and its no-op task, the read path switched for `mode` (mode `redis`: the
    Redis broker, the reference for a round trip)."""
    from aiotask import App
    from aiotask.brokers import _rabbitmq_reader

    _rabbitmq_reader.ENABLED = mode != "stock"
    _rabbitmq_reader.DIRECT = mode == "direct"
    broker = REDIS if mode == "redis" else AMQP
    app = App("bench", broker=broker, backend=REDIS, key_prefix=ns,
              visibility_timeout=600, worker_lost_after=600)  # fmt: skip

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app, noop


async def worker_only(mode: str, ns: str) -> None:
    """A worker for `ns` in its own process (the `tripx` measurement), until terminated."""
    from aiotask.testing import start_worker

    app, _ = make_app(mode, ns)
    await app.connect()
    async with start_worker(app, concurrency=100, prefetch=200):
        await asyncio.Event().wait()


def spawn_worker(ns: str, mode: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "benchmarks.amqp_read", "--worker", ns, "--mode", mode]
    return subprocess.Popen(argv, cwd=ROOT)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Terminate the worker this run started (by its PID) and wait for it to exit."""
    worker.terminate()
    worker.wait(timeout=30)


async def child(n: int, mode: str, what: str, callgrind: bool) -> dict[str, float]:
    import redis.asyncio as aioredis

    from aiotask.testing import start_worker
    from benchmarks.harness import cleanup_amqp

    ns = f"aiotamqpread-{uuid.uuid4().hex[:8]}"
    app, noop = make_app(mode, ns)
    out: dict[str, float] = {}
    worker: subprocess.Popen[bytes] | None = None
    await app.connect()
    try:
        if what == "drain":
            for i in range(0, n, 1000):
                await noop.send_batch([() for _ in range(min(1000, n - i))])
            async with start_worker(app, concurrency=100, prefetch=200) as worker:
                if callgrind:
                    instrument("on")
                prof = cProfile.Profile() if os.environ.get("AMQP_READ_PROFILE") else None
                if prof is not None:
                    prof.enable()
                t0, c0 = time.perf_counter(), time.process_time()
                while worker.dispatcher.processed < n:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                t1, c1 = time.perf_counter(), time.process_time()
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(os.environ["AMQP_READ_PROFILE"])
                if callgrind:
                    instrument("off")
            out = {"rate": n / (t1 - t0), "cpu_us": (c1 - c0) / n * 1e6}
        else:
            if what == "tripx":  # the worker in another process, as in the harness
                worker = spawn_worker(ns, mode)
                await noop.send()  # declares the queue; answered once the worker is up
            async with contextlib.AsyncExitStack() as stack:
                if worker is None:
                    await stack.enter_async_context(
                        start_worker(app, concurrency=100, prefetch=200)
                    )
                for _ in range(20):  # warm up
                    await (await noop.send()).get(timeout=10)
                if callgrind:
                    instrument("on")
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    await (await noop.send()).get(timeout=10)
                    times.append(time.perf_counter() - t0)
                if callgrind:
                    instrument("off")
            times.sort()
            out = {
                "p50_ms": times[len(times) // 2] * 1e3,
                "p90_ms": times[len(times) * 9 // 10] * 1e3,
            }
    finally:
        if worker is not None:
            stop_worker(worker)
        await app.close()
        await cleanup_amqp(AMQP, ns)
        r = aioredis.Redis.from_url(REDIS)
        keys = [k async for k in r.scan_iter(match=f"*{ns}*", count=1000)]
        for i in range(0, len(keys), 500):
            await r.unlink(*keys[i : i + 500])
        await r.aclose()
    return out


def run(n: int, mode: str, what: str) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.amqp_read", "--child", str(n), "--what", what]
    argv += ["--mode", mode]
    res = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def instructions(n: int, mode: str, what: str = "drain") -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
            f"--callgrind-out-file={out}",
            *(sys.executable, "-m", "benchmarks.amqp_read"),
            *("--child", str(n), "--what", what, "--callgrind", "--mode", mode),
        ]
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.amqp_read", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--drain", type=int, default=20000)
    p.add_argument("--trips", type=int, default=500)
    p.add_argument("--instructions", action="store_true")
    p.add_argument("--measure", default="drain,trip", help="with --instructions: drain, trip")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--what", default="drain", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="direct", help=argparse.SUPPRESS)
    p.add_argument(
        "--modes",
        default="stock,direct",
        help="stock, reader (buffered frames), direct (and no task per delivery)",
    )
    p.add_argument("--callgrind", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        asyncio.run(worker_only(args.mode, args.worker))
        return 0
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.mode, args.what, args.callgrind))))
        return 0
    modes = args.modes.split(",")
    print("load average:", os.getloadavg())
    if args.instructions:
        for what, sizes in (("drain", (1000, 2000)), ("trip", (100, 200))):
            if what not in args.measure:
                continue
            for mode in modes:
                totals = [instructions(n, mode, what) for n in sizes]
                per = (totals[1] - totals[0]) / (sizes[1] - sizes[0])
                print(f"[instructions] {what} {mode}: {totals} -> {per:,.0f} each", flush=True)
        print("load average:", os.getloadavg())
        return 0
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            d = run(args.drain, mode, "drain")
            t = run(args.trips, mode, "trip")
            rows[mode].append({**d, **t})
            print(f"{mode:8}", d, t, os.getloadavg(), flush=True)
    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in rows.items()}
    for m in modes:
        print(f"median {m}:", med[m])
        ratios = {k: round(med[m][k] / med[modes[0]][k], 3) for k in med[m]}
        print(f"ratios {m}/{modes[0]}:", ratios)
    print("load average:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
