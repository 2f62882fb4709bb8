"""Drain throughput of one aiotask worker with events off and on (`-E`), on the local Redis.

    python -m benchmarks.events_ratio              # 5 pairs of 20,000 no-op tasks, ~1-2 min
    python -m benchmarks.events_ratio --pairs 3 --n 10000

Uses the harness's pieces (a fresh namespace, producer and worker process per measurement, the
`drain` workload of benchmarks/producer.py, cleanup by SCAN MATCH). The two variants alternate,
the order swapped every pair so neither always runs first; the figure is the ratio of the
median drain rates, on / off (the issue's bar: >= 0.9). Separate from `harness --smoke`, so the
smoke benchmark keeps its length. Exit code 1 when a measurement fails or the ratio is < 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from benchmarks.frameworks import FRAMEWORKS, Framework, aiotask_worker
from benchmarks.harness import SMOKE, Plan, Runner

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from benchmarks.harness import Measurement

#: the worse-case bar of issue 14: events on keep at least this share of the drain rate
BAR = 0.9


def events_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [*aiotask_worker(py, workload, ns), "-E"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc), its pool children excluded."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuRunner(Runner):
    """The harness's Runner, also noting the worker's CPU seconds once the drain is done: on a
    shared machine the drain rate swings with the load, the CPU a worker spends much less."""

    async def _run(
        self,
        fw: Framework,
        workload: str,
        ns: str,
        m: Measurement,
        procs: dict[str, Any],
        worker_log: Path,
        producer_log: Path,
    ) -> None:
        await super()._run(fw, workload, ns, m, procs, worker_log, producer_log)
        worker = procs.get("worker")
        if worker is not None and worker.returncode is None:
            m.values["worker_cpu_s"] = cpu_seconds(worker.pid)


def variants() -> tuple[Framework, Framework]:
    off = FRAMEWORKS["aiotask"]
    on = replace(off, key="aiotask-events", label="aiotask -E", worker=events_worker)
    return off, on


async def run(args: argparse.Namespace) -> int:
    plan = Plan(
        **{
            **SMOKE.__dict__,
            "mode": "events",
            "frameworks": ("aiotask",),
            "workloads": ("drain",),
            "sizes": {"drain": {"n": args.n, "batch": 1000}},
            "timeout_s": 300,
        }
    )
    runner = CpuRunner(plan, args.redis_url, args.amqp_url)
    off, on = variants()
    rates: dict[str, list[float]] = {off.key: [], on.key: []}
    cpus: dict[str, list[float]] = {off.key: [], on.key: []}
    for pair in range(args.pairs):
        for fw in (off, on) if pair % 2 == 0 else (on, off):
            m = await runner.measure(fw, "drain", pair)
            if m.error or "drain" not in m.values:
                print(f"[events] {fw.label} pair {pair}: ERROR {m.error}", file=sys.stderr)
                return 1
            rates[fw.key].append(m.values["drain"])
            cpu = m.values.get("worker_cpu_s", float("nan"))
            cpus[fw.key].append(cpu)
            print(
                f"[events] pair {pair} {fw.label:12s} drain {m.values['drain']:8.0f} tasks/s"
                f"  worker CPU {cpu:6.2f} s"
            )
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    ratio = med[on.key] / med[off.key]
    print(
        f"[events] {args.pairs} pairs of {args.n} no-op tasks on Redis\n"
        f"[events] drain off: median {med[off.key]:.0f}/s (best {best[off.key]:.0f})\n"
        f"[events] drain on:  median {med[on.key]:.0f}/s (best {best[on.key]:.0f})\n"
        f"[events] ratio on/off: medians {ratio:.3f}, best runs "
        f"{best[on.key] / best[off.key]:.3f}\n"
        f"[events] worker CPU (start-up included): off {cpu_med[off.key]:.2f} s, "
        f"on {cpu_med[on.key]:.2f} s; ratio off/on {cpu_med[off.key] / cpu_med[on.key]:.3f}"
    )
    if ratio < BAR:
        print(f"[events] ratio {ratio:.3f} is under {BAR}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.events_ratio", description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="tasks per drain")
    p.add_argument("--pairs", type=int, default=5, help="off/on pairs")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
