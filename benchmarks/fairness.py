"""Fairness across keys: tenant B's wait with tenant A's backlog queued ahead, vs an idle queue.

    .venv/bin/python -m benchmarks.fairness [--broker sqlite|redis|rabbitmq|postgres]
                                            [--backlog 10000] [--probes 200] [--gap 0.025]
                                            [--work 0.002] [--prefetch 0] [--repeat 3]
                                            [--fifo] [--breakdown]

One `aiotask worker` process (concurrency 4) on one SQLite file, on the Redis server of
AIOTASK_BENCH_REDIS (default redis://127.0.0.1:6379/0) or the RabbitMQ of AIOTASK_BENCH_AMQP
(default amqp://guest:guest@127.0.0.1:5672/) under a fresh key prefix (deleted after), or on
the PostgreSQL of AIOTASK_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test)
in a fresh schema, dropped afterwards. Tenant B
sends `--probes` tasks, one every `--gap` seconds; its wait is the time from send to the
task's start (both clocks are this machine's). Runs: "idle" (B alone), "fair" (A's backlog of
`--backlog` tasks queued first, every task with fairness_key="tenant_id"), and with `--fifo`
"fifo" (the same backlog without fairness_key) for contrast. Each task sleeps `--work` seconds.

A p99 needs enough probes to be more than the slowest one: 200 probes make it the third
slowest (40 made it the slowest, a single stall of a loaded machine). `--repeat N` alternates
idle and fair runs N times; each pair gives fair/idle ratios of p50 and p99, and the summary is
the median pair (the target: p99 ratio 2x or less). A fair run whose backlog ran out before
its last probe (the worker drained A's 10,000 first) measured an idle queue: it is flagged.
`--breakdown` (SQLite) splits B's wait into its send (the insert's commit, write lock
included), commit to claim (the worker's wakeup or its turn), and claim to start (the worker's
buffer and event loop), read from the claimed row's lease by the probe task itself.
On a loaded machine, `chrt -f 10 python -m benchmarks.fairness ...` runs the benchmark's
processes (they inherit the policy) before anything else: the load then stays out of the
client side's waits (SQLite's entirely; a server's own process still waits its turn).
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
from typing import NamedTuple

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

    LEASE = float(os.environ.get("FAIR_LEASE", "0"))

    def _claimed_at() -> float:
        # when the worker claimed this probe: its row's lease end less the lease
        import sqlite3
        from aiotask.context import current_task

        task = current_task.get()
        path = os.environ["AIOTASK_BROKER_URL"].removeprefix("sqlite:///")
        conn = sqlite3.connect(path)
        try:
            row = conn.execute(
                "SELECT lease_until FROM aiotask_messages WHERE message_id=?", (task.id,)
            ).fetchone()
        finally:
            conn.close()
        return row[0] - LEASE if row and row[0] is not None else 0.0

    async def _run(tenant_id: str, i: int) -> None:
        if tenant_id == "B":
            started = time.time()
            claimed = _claimed_at() if LEASE else 0.0
            with open(LOG, "a") as f:
                f.write(f"{i} {started} {claimed}\\n")
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


class Run(NamedTuple):
    """One run's probes: B's waits (ms) and their parts, and what was left of A's backlog."""

    waits: list[float]
    #: send -> the send returned (its insert committed)
    sends: list[float]
    #: commit -> the worker claimed the probe (--breakdown, SQLite; else empty)
    to_claim: list[float]
    #: claim -> the probe started
    to_start: list[float]
    #: A's messages still queued when the last probe had started (purged then)
    left: int


async def _run(url: str, task: str, backlog: int, probes: int, gap: float, log: Path) -> Run:
    async with App("fairbench", broker=url) as app:

        @app.task(name=task, fairness_key="tenant_id" if task == "fair" else None)
        async def job(tenant_id: str, i: int) -> None: ...

        for start in range(0, backlog, 1000):
            stop = min(start + 1000, backlog)
            await job.send_batch([job.call("A", i) for i in range(start, stop)])
        sent: dict[int, float] = {}
        done: dict[int, float] = {}
        for i in range(probes):
            sent[i] = time.time()
            await job.send("B", i)
            done[i] = time.time()
            await asyncio.sleep(gap)
        while True:  # every probe started
            rows = _rows(log)
            if len(rows) >= probes:
                break
            await asyncio.sleep(0.05)
        left = await app.broker.purge("default")  # the rest of A's backlog
    probed = [(int(i), float(t), float(c)) for i, t, c in rows]
    return Run(
        [(t - sent[i]) * 1000 for i, t, _ in probed],
        [(done[i] - sent[i]) * 1000 for i, _, _ in probed],
        [(c - done[i]) * 1000 for i, _, c in probed if c],
        [(t - c) * 1000 for _, t, c in probed if c],
        left,
    )


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


def _measure(workdir: Path, name: str, task: str, backlog: int, args: argparse.Namespace) -> Run:
    log = workdir / f"{name}.log"
    url, extra = _url(workdir, name, args)
    env = dict(
        os.environ, AIOTASK_BROKER_URL=url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
        FAIR_LOG=str(log), FAIR_WORK=str(args.work), **extra,
    )  # fmt: skip
    if args.prefetch:
        env["AIOTASK_PREFETCH"] = str(args.prefetch)
    if args.breakdown and args.broker == "sqlite":
        env["FAIR_LEASE"] = env["AIOTASK_VISIBILITY_TIMEOUT"] = "30"
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


def _line(name: str, run: Run) -> str:
    p50, p99 = statistics.median(run.waits), _pct(run.waits, 0.99)
    text = f"{name:6} B wait p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
    parts = [("send", run.sends), ("commit->claim", run.to_claim), ("claim->start", run.to_start)]
    for label, values in parts:
        if values:
            text += (
                f"  | {label} p50 {statistics.median(values):5.1f} p99 {_pct(values, 0.99):5.1f}"
            )
    if name.startswith("fair"):  # (a fifo run drains A before B by design)
        text += f"  | A left {run.left}" + ("" if run.left else " (DRAINED: not a backlog run)")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.025)
    parser.add_argument("--work", type=float, default=0.002)
    parser.add_argument("--fifo", action="store_true", help="also a run without fairness_key")
    parser.add_argument("--broker", choices=("sqlite", *SERVERS), default="sqlite")
    parser.add_argument("--repeat", type=int, default=3, help="idle/fair pairs, alternated")
    parser.add_argument("--prefetch", type=int, default=0, help="0: the worker's default")
    parser.add_argument("--breakdown", action="store_true", help="SQLite: where B's wait goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "fair_tasks.py").write_text(TASKS)
        loads = [os.getloadavg()[0]]
        pairs: list[tuple[Run, Run]] = []
        for n in range(args.repeat):
            # alternate which goes first, so a drift of the machine's load favours neither
            order = ("idle", "fair") if n % 2 == 0 else ("fair", "idle")
            got = {
                kind: _measure(workdir, f"{kind}{n}", "fair", args.backlog * (kind == "fair"), args)
                for kind in order
            }
            pairs.append((got["idle"], got["fair"]))
            loads.append(os.getloadavg()[0])
        fifo = _measure(workdir, "fifo", "fifo", args.backlog, args) if args.fifo else None
    prefetch = args.prefetch or "default"
    print(
        f"{args.broker}, 1 worker x 4 (prefetch {prefetch}), tasks of {args.work * 1000:g} ms, "
        f"A's backlog {args.backlog}, {args.probes} probes {args.gap * 1000:g} ms apart, "
        f"load average (1 min) {' '.join(f'{x:.1f}' for x in loads)}"
    )
    p99s: list[float] = []
    p50s: list[float] = []
    for n, (idle, fair) in enumerate(pairs):
        print(_line(f"idle{n}", idle))
        print(_line(f"fair{n}", fair))
        p99s.append(_pct(fair.waits, 0.99) / _pct(idle.waits, 0.99))
        p50s.append(statistics.median(fair.waits) / statistics.median(idle.waits))
        print(f"  pair {n}: fair/idle p99 {p99s[-1]:.2f}x  p50 {p50s[-1]:.2f}x")
    valid = [n for n, (_, fair) in enumerate(pairs) if fair.left]
    met = sum(p99s[n] <= 2 for n in valid)
    print(
        f"median of {len(pairs)} pairs: fair/idle p99 {statistics.median(p99s):.2f}x "
        f"(range {min(p99s):.2f}-{max(p99s):.2f}), p50 {statistics.median(p50s):.2f}x; "
        f"p99 <= 2x in {met} of {len(valid)} pairs with a backlog left (target <= 2x)"
    )
    if fifo is not None:
        print(_line("fifo", fifo))
        idle = pairs[-1][0]
        ratio = _pct(fifo.waits, 0.99) / _pct(idle.waits, 0.99)
        print(f"ratio fifo p99 / idle{len(pairs) - 1} p99: {ratio:.2f}x")


if __name__ == "__main__":
    main()
