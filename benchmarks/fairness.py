"""Fairness across keys: tenant B's wait with tenant A's backlog queued ahead, vs an idle queue.

    .venv/bin/python -m benchmarks.fairness [--broker sqlite|redis|rabbitmq|postgres]
                                            [--backlog 10000]
                                            [--probes 40] [--gap 0.05] [--work 0.002]
                                            [--prefetch 0] [--no-fifo] [--repeat 1]

One `aiotask worker` process (concurrency 4) on one SQLite file, on the Redis server of
AIOTASK_BENCH_REDIS (default redis://127.0.0.1:6379/0) or the RabbitMQ of AIOTASK_BENCH_AMQP
(default amqp://guest:guest@127.0.0.1:5672/) under a fresh key prefix (deleted after), or on
the PostgreSQL of AIOTASK_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test)
in a fresh schema, dropped afterwards. Tenant B
sends `--probes` tasks, one every `--gap` seconds; its wait is the time from send to the
task's start (both clocks are this machine's). Runs: "idle" (B alone), "fair" (A's backlog of
`--backlog` tasks queued first, every task with fairness_key="tenant_id"), and for contrast
"fifo" (the same backlog without fairness_key). Each task sleeps `--work` seconds. Reported:
B's p50/p99 wait per run and the ratio fair p99 / idle p99 (the target is 2x or less).
`--repeat N` alternates the idle and fair runs N times (the ratio of each pair, then the fifo
run once): on a shared machine, read the spread, not one figure.
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

from aiotask import App
from benchmarks.postgres_bench import cleanup

REDIS = os.environ.get("AIOTASK_BENCH_REDIS", "redis://127.0.0.1:6379/0")
AMQP = os.environ.get("AIOTASK_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES = os.environ.get("AIOTASK_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SERVERS = {"redis": REDIS, "rabbitmq": AMQP, "postgres": POSTGRES}

TASKS = textwrap.dedent(
    """
    import asyncio, os, time
    from aiotask import App

    app = App("fairbench")
    LOG = os.environ["FAIR_LOG"]
    WORK = float(os.environ["FAIR_WORK"])

    async def _run(tenant_id: str, i: int) -> None:
        if tenant_id == "B":
            with open(LOG, "a") as f:
                f.write(f"{i} {time.time()}\\n")
        await asyncio.sleep(WORK)

    @app.task(name="fair", fairness_key="tenant_id")
    async def fair(tenant_id: str, i: int) -> None:
        await _run(tenant_id, i)

    @app.task(name="fifo")
    async def fifo(tenant_id: str, i: int) -> None:
        await _run(tenant_id, i)
    """
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rows(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


#: B's send times (ms) per run: how much of its wait was its own publish
SENDS: dict[str, list[float]] = {}


async def _run(
    url: str, task: str, backlog: int, probes: int, gap: float, log: Path
) -> list[float]:
    async with App("fairbench", broker=url) as app:

        @app.task(name=task, fairness_key="tenant_id" if task == "fair" else None)
        async def job(tenant_id: str, i: int) -> None: ...

        for start in range(0, backlog, 1000):
            stop = min(start + 1000, backlog)
            await job.send_batch([job.call("A", i) for i in range(start, stop)])
        sent: dict[int, float] = {}
        for i in range(probes):
            sent[i] = time.time()
            await job.send("B", i)
            SENDS.setdefault(log.stem, []).append((time.time() - sent[i]) * 1000)
            await asyncio.sleep(gap)
        while True:  # every probe started
            rows = _rows(log)
            if len(rows) >= probes:
                break
            await asyncio.sleep(0.05)
        await app.broker.purge("default")  # the rest of A's backlog
    return [(float(t) - sent[int(i)]) * 1000 for i, t in rows]


def _url(workdir: Path, name: str, args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The broker URL of one run and its environment (a fresh file, or a fresh key prefix)."""
    if args.broker in SERVERS:  # `_`: a prefix that is also a plain PostgreSQL schema name
        prefix = f"fairbench_{uuid.uuid4().hex[:8]}"
        return SERVERS[args.broker], {"AIOTASK_KEY_PREFIX": prefix}
    return f"sqlite:///{workdir / name}.db", {}


async def _drop_queues(url: str, prefix: str) -> None:
    """The default queue with its dead, delay and key queues and its announcement stream."""
    from aiotask.brokers.rabbitmq import RabbitMQBroker
    from aiotask.settings import Settings

    broker = RabbitMQBroker(url, Settings(broker_url=url, key_prefix=prefix), "fairbench")
    await broker.connect()
    try:
        await broker.delete_queue("default")
    finally:
        await broker.close()


def _measure(
    workdir: Path, name: str, task: str, backlog: int, args: argparse.Namespace
) -> list[float]:
    log = workdir / f"{name}.log"
    url, extra = _url(workdir, name, args)
    env = dict(
        os.environ, AIOTASK_BROKER_URL=url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
        FAIR_LOG=str(log), FAIR_WORK=str(args.work), **extra,
    )  # fmt: skip
    if args.prefetch:
        env["AIOTASK_PREFETCH"] = str(args.prefetch)
    argv = [sys.executable, "-m", "aiotask", "worker", "-A", "fair_tasks:app", "-c", "4"]
    out = workdir / f"{name}.worker.log"
    with out.open("w") as err:
        worker = subprocess.Popen(argv, cwd=workdir, env=env, stderr=err)
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # the sending App reads the same key prefix
    try:
        deadline = time.monotonic() + 60
        while " ready" not in out.read_text() and time.monotonic() < deadline:
            if worker.poll() is not None:  # else B's probes would wait for it forever
                raise RuntimeError(f"the worker exited:\n{out.read_text()[-3000:]}")
            time.sleep(0.1)  # a loaded machine can take seconds to start a worker
        time.sleep(1.0)  # the worker is up and idle
        return asyncio.run(_run(url, task, backlog, args.probes, args.gap, log))
    finally:
        worker.terminate()
        worker.wait(30)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "AIOTASK_KEY_PREFIX" in extra:
            prefix = extra["AIOTASK_KEY_PREFIX"]
            if args.broker == "rabbitmq":
                asyncio.run(_drop_queues(url, prefix))
            else:  # a schema (PostgreSQL) or keys (Redis)
                asyncio.run(cleanup(args.broker, url, prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.05)
    parser.add_argument("--work", type=float, default=0.002)
    parser.add_argument("--no-fifo", action="store_true")
    parser.add_argument("--broker", choices=("sqlite", *SERVERS), default="sqlite")
    parser.add_argument("--repeat", type=int, default=1, help="idle/fair pairs, alternated")
    parser.add_argument("--prefetch", type=int, default=0, help="0: the worker's default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "fair_tasks.py").write_text(TASKS)
        load = os.getloadavg()[0]
        pairs: list[tuple[str, list[float], str, list[float]]] = []
        for n in range(args.repeat):
            idle = _measure(workdir, f"idle{n}", "fair", 0, args)
            fair = _measure(workdir, f"fair{n}", "fair", args.backlog, args)
            pairs.append((f"idle{n}", idle, f"fair{n}", fair))
        fifo = None if args.no_fifo else _measure(workdir, "fifo", "fifo", args.backlog, args)
    prefetch = args.prefetch or "default"
    print(
        f"{args.broker}, 1 worker x 4 (prefetch {prefetch}), tasks of {args.work * 1000:g} ms, "
        f"A's backlog {args.backlog}, load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    runs = {name: waits for i, a, f, b in pairs for name, waits in ((i, a), (f, b))}
    if fifo is not None:
        runs["fifo"] = fifo
    for name, waits in runs.items():
        p50, p99 = statistics.median(waits), _pct(waits, 0.99)
        sends = SENDS.get(name, [0.0])
        print(
            f"{name:6} B wait p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   "
            f"(of it, B's send p50 {statistics.median(sends):6.1f} ms p99 {_pct(sends, 0.99):6.1f})"
        )
    for idle_name, idle, fair_name, fair in pairs:
        ratio = _pct(fair, 0.99) / _pct(idle, 0.99)
        print(f"ratio {fair_name} p99 / {idle_name} p99: {ratio:.2f}x (target <= 2x)")
    if fifo is not None:
        idle = pairs[-1][1]
        print(f"ratio fifo p99 / idle p99: {_pct(fifo, 0.99) / _pct(idle, 0.99):.2f}x")


if __name__ == "__main__":
    main()
