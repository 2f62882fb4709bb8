"""One RabbitMQ round trip's timeline: socket writes/reads per server and marks on the way.

    python -m benchmarks.amqp_trace [--trips 200]

The producer (this process) and a worker (its own process, as in the harness) record
`time.perf_counter_ns()` (CLOCK_MONOTONIC: one clock for both) for every socket write and
read on the AMQP (5672) and Redis (6379) connections (and whether TCP_NODELAY is set), at the
entry and exit of a few methods (publish, confirm, deliver, receive, settle, store, ack,
wait) and at the task's start. The first trips are printed relative to their send start,
then each step's median over all trips. Experiments, by environment variable:
AMQP_TRACE_GAP (seconds between trips, default 0), AMQP_TRACE_NOCONFIRM=1 (send with
confirm=False), AMQP_TRACE_SLEEP (the task sleeps), AMQP_TRACE_ACK_DELAY (the worker acks
later), AMQP_TRACE_CQV2=1 (work queues declared as classic queues v2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = "redis://127.0.0.1:6379/0"
EVENTS: list[tuple[int, str]] = []
WRITES: dict[str, list[int]] = {}  # microseconds per transport write, per server
PORTS = {5672: "amqp", 6379: "redis"}
#: seconds between trips (AMQP_TRACE_GAP; 0: back to back, as the harness's latency row)
GAP = float(os.environ.get("AMQP_TRACE_GAP", "0"))
#: AMQP_TRACE_NOCONFIRM=1: send with confirm=False (how much of the trip is the confirm?)
CONFIRM = not os.environ.get("AMQP_TRACE_NOCONFIRM")
#: seconds the task sleeps (AMQP_TRACE_SLEEP): does a later ack delay the publisher's confirm?
SLEEP = float(os.environ.get("AMQP_TRACE_SLEEP", "0"))


def _peer(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    return PORTS.get(peer[1], str(peer[1])) if peer else "?"


def mark(owner: Any, name: str, label: str) -> None:
    """Record a call of owner.name (and, for a coroutine, its return as `label end`)."""
    fn = getattr(owner, name)
    if asyncio.iscoroutinefunction(fn):

        async def traced(*a: Any, **kw: Any) -> Any:
            EVENTS.append((time.perf_counter_ns(), label))
            try:
                return await fn(*a, **kw)
            finally:
                EVENTS.append((time.perf_counter_ns(), f"{label} end"))
    else:

        def traced(*a: Any, **kw: Any) -> Any:  # type: ignore[misc]
            EVENTS.append((time.perf_counter_ns(), label))
            return fn(*a, **kw)

    setattr(owner, name, traced)


def hook() -> None:
    """Record every socket write and read of the selector transports (and TCP_NODELAY),
    and the calls of the methods a round trip passes through."""
    import socket
    from asyncio import selector_events

    import aiormq.channel

    from aiotask.backends.redis import RedisBackend
    from aiotask.brokers._rabbitmq_publish import Publisher
    from aiotask.brokers._rabbitmq_reader import BufferedFrames, DirectDeliveries
    from aiotask.brokers.rabbitmq import RabbitMQBroker
    from aiotask.worker.settle import Settler

    cls = selector_events._SelectorSocketTransport
    write, read = cls.write, cls._read_ready__data_received  # type: ignore[attr-defined]

    def traced_write(self: Any, data: Any) -> None:
        nd = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        t0 = time.perf_counter_ns()
        write(self, data)
        took = (time.perf_counter_ns() - t0) // 1000
        EVENTS.append((t0, f"w {_peer(self)} {len(data)}{'' if nd else ' NAGLE'}"))
        WRITES.setdefault(_peer(self), []).append(took)

    def traced_read(self: Any) -> None:
        EVENTS.append((time.perf_counter_ns(), f"r {_peer(self)}"))
        read(self)

    cls.write = traced_write  # type: ignore[method-assign]
    cls._read_ready__data_received = traced_read  # type: ignore[attr-defined]
    mark(Publisher, "send", "pub.send")  # producer
    mark(aiormq.channel.Channel, "basic_publish", "basic_publish")
    mark(aiormq.channel.Channel, "_confirm_delivery", "confirmed")
    mark(RedisBackend, "wait", "backend.wait")
    mark(BufferedFrames, "_read", "frames.read")  # both: a socket read that yields frames
    mark(DirectDeliveries, "_on_deliver_frame", "on_deliver")  # worker
    mark(DirectDeliveries, "deliver", "deliver")  # worker: also inline (InlineFrames)
    mark(RabbitMQBroker, "receive", "receive")
    mark(Settler, "flush", "settle.flush")
    mark(RedisBackend, "store", "backend.store")
    mark(RabbitMQBroker, "ack", "broker.ack")


def make_app(ns: str) -> tuple[Any, Any]:
    from aiotask import App

    if os.environ.get("AMQP_TRACE_CQV2"):  # experiment: classic queues v2 (3.10+ opt-in)
        from aiotask.brokers import _rabbitmq_queues as queues

        plain = queues.work_arguments

        def v2(*a: Any) -> dict[str, object]:
            return {**plain(*a), "x-queue-version": 2}

        queues.work_arguments = v2  # type: ignore[assignment]

    app = App("bench", broker=AMQP, backend=REDIS, key_prefix=ns,
              visibility_timeout=600, worker_lost_after=600)  # fmt: skip

    @app.task(name="noop")
    async def noop() -> None:
        EVENTS.append((time.perf_counter_ns(), "TASK"))
        if SLEEP:
            await asyncio.sleep(SLEEP)

    return app, noop


async def worker_only(ns: str, out: str) -> None:
    from aiotask.testing import start_worker

    hook()
    ack_delay = float(os.environ.get("AMQP_TRACE_ACK_DELAY", "0"))
    if ack_delay:  # experiment: does the worker's ack delay the producer's confirm?
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        ack = RabbitMQBroker.ack

        async def late_ack(self: Any, deliveries: Any) -> None:
            await asyncio.sleep(ack_delay)
            await ack(self, deliveries)

        RabbitMQBroker.ack = late_ack  # type: ignore[method-assign]
    app, _ = make_app(ns)
    await app.connect()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with start_worker(app, concurrency=100, prefetch=200):
        await stop.wait()


def dump(out: str) -> None:
    """The worker's events, for the producer's report (written once the worker stopped)."""
    Path(out).write_text("\n".join(f"{t} W {e}" for t, e in EVENTS))
    for peer, took in WRITES.items():
        print(f"worker write {peer}: p50 {statistics.median(took)} us, n {len(took)}", flush=True)


def spawn_worker(ns: str, out: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "benchmarks.amqp_trace", "--worker", ns, "--out", out]
    return subprocess.Popen(argv, cwd=ROOT)


async def producer(trips: int) -> None:
    import redis.asyncio as aioredis

    from benchmarks.harness import cleanup_amqp

    hook()
    ns = f"aiotamqptrace-{uuid.uuid4().hex[:8]}"
    out = f"/tmp/amqp_trace_{ns}.txt"
    app, noop = make_app(ns)
    await app.connect()
    worker = spawn_worker(ns, out)
    try:
        await (await noop.send()).get(timeout=30)
        for _ in range(50):
            await (await noop.send()).get(timeout=10)
        EVENTS.clear()
        for _ in range(trips):
            EVENTS.append((time.perf_counter_ns(), "SEND"))
            r = await noop.apply_async(confirm=CONFIRM)
            EVENTS.append((time.perf_counter_ns(), "SENT"))
            await r.get(timeout=10)
            EVENTS.append((time.perf_counter_ns(), "GOT"))
            await asyncio.sleep(GAP)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await app.close()
        await cleanup_amqp(AMQP, ns)
        r = aioredis.Redis.from_url(REDIS)
        keys = [k async for k in r.scan_iter(match=f"*{ns}*", count=1000)]
        if keys:
            await r.unlink(*keys)
        await r.aclose()
    report(out)


def report(out: str) -> None:
    for peer, took in WRITES.items():
        print(f"producer write {peer}: p50 {statistics.median(took)} us, n {len(took)}")
    mine = [(t, f"P {e}") for t, e in EVENTS]
    theirs = []
    for line in Path(out).read_text().splitlines():
        t, rest = line.split(" ", 1)
        theirs.append((int(t), rest))
    os.unlink(out)
    allev = sorted(mine + theirs)
    trips: list[list[tuple[int, str]]] = []
    for t, e in allev:
        if e == "P SEND":
            trips.append([])
        if trips:
            trips[-1].append((t, e))
    totals = []
    steps: dict[str, list[float]] = {}
    for i, trip in enumerate(trips):
        t0 = trip[0][0]
        got = [t for t, e in trip if e == "P GOT"]
        if not got:
            continue
        totals.append((got[0] - t0) / 1e3)
        seen: dict[str, int] = {}
        prev = t0
        for t, e in trip:
            if t > got[0]:
                break
            n = seen[e] = seen.get(e, 0) + 1
            steps.setdefault(f"{e} #{n}", []).append((t - t0) / 1e3)
            if i < 3:
                print(f"{(t - t0) / 1e3:8.1f} us (+{(t - prev) / 1e3:6.1f})  {e}")
            prev = t
        if i < 3:
            print("---")
    print(f"trips {len(totals)}  p50 {statistics.median(totals):.0f} us")

    def first(trip: list[tuple[int, str]], name: str) -> int | None:
        return next((t for t, e in trip if e.startswith(name)), None)

    gaps = []
    for trip in trips:
        ack, conf = first(trip, "W w amqp"), first(trip, "P r amqp")
        if ack is not None and conf is not None:
            gaps.append((conf - ack) / 1e3)
    if gaps:
        q = statistics.quantiles(gaps, n=10)
        print(f"confirm read - worker ack write: p10 {q[0]:.0f} p50 {q[4]:.0f} p90 {q[8]:.0f} us")
    half = len(totals) // 2
    common = [(statistics.median(v), k, len(v)) for k, v in steps.items() if len(v) > half]
    for med, k, n in sorted(common):
        print(f"median {med:8.1f} us  {k}  ({n}/{len(totals)})")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trips", type=int, default=200)
    p.add_argument("--worker")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        asyncio.run(worker_only(args.worker, args.out))
        dump(args.out)
        return 0
    print("load average:", os.getloadavg())
    asyncio.run(producer(args.trips))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
