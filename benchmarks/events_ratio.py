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
import statistics
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from benchmarks.frameworks import FRAMEWORKS, Framework, aiotask_worker
from benchmarks.harness import SMOKE, Plan, Runner

if TYPE_CHECKING:
    from pathlib import Path

#: the worse-case bar of issue 14: events on keep at least this share of the drain rate
BAR = 0.9


def events_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [*aiotask_worker(py, workload, ns), "-E"]


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
    runner = Runner(plan, args.redis_url, args.amqp_url)
    off, on = variants()
    rates: dict[str, list[float]] = {off.key: [], on.key: []}
    for pair in range(args.pairs):
        for fw in (off, on) if pair % 2 == 0 else (on, off):
            m = await runner.measure(fw, "drain", pair)
            if m.error or "drain" not in m.values:
                print(f"[events] {fw.label} pair {pair}: ERROR {m.error}", file=sys.stderr)
                return 1
            rates[fw.key].append(m.values["drain"])
            print(f"[events] pair {pair} {fw.label:12s} drain {m.values['drain']:8.0f} tasks/s")
    med_off, med_on = statistics.median(rates[off.key]), statistics.median(rates[on.key])
    ratio = med_on / med_off
    print(
        f"[events] median drain: off {med_off:.0f}/s, on {med_on:.0f}/s; "
        f"ratio on/off = {ratio:.3f} (min-max off {min(rates[off.key]):.0f}-"
        f"{max(rates[off.key]):.0f}, on {min(rates[on.key]):.0f}-{max(rates[on.key]):.0f}; "
        f"{args.pairs} pairs of {args.n} tasks)"
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
