"""Drain throughput and worker CPU of one aiotask worker with events off and on (`-E`), Redis.

    python -m benchmarks.events_ratio              # 5 pairs of 20,000 no-op tasks, ~1-2 min
    python -m benchmarks.events_ratio --pairs 3 --n 10000
    python -m benchmarks.events_ratio --together   # each pair drains at the same time
    python -m benchmarks.events_ratio --control    # A/A: both without -E (the method's spread)

Uses the harness's pieces (a fresh namespace, producer and worker process per measurement, the
`drain` workload of benchmarks/producer.py, cleanup by SCAN MATCH) through
benchmarks/interleave.py: the two variants alternate, the order swapped every pair, and the
worker's CPU time over the drain window (start-up left out) is measured beside the drain rate.
Figures: the ratio of the median drain rates, on / off (the issue's bar: >= 0.9), and the ratio
of the median CPU per task, off / on (the same bar, much less noisy on a shared machine).
With `--together` the two drains of a pair run at the same time (two namespaces, two
producers, two workers), so both see the same load from the rest of the machine: one after the
other, the CPU a task costs follows the machine's load (cache and scheduler churn) by more
than the events' own cost. Exit code 1 when a measurement fails or the CPU ratio is < 0.9.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from benchmarks.frameworks import FRAMEWORKS, Framework, aiotask_worker
from benchmarks.interleave import compare, main_with, parser, ratio, report

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

#: the worse-case bar of issue 14: events on keep at least this share of the drain rate
BAR = 0.9


def events_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [*aiotask_worker(py, workload, ns), "-E"]


def variants(control: bool = False) -> tuple[Framework, Framework]:
    """(events off, events on); with `control` the second is events off too, an A/A check of
    how far from 1.0 the method puts two identical workers."""
    off = FRAMEWORKS["aiotask"]
    if control:
        return off, replace(off, key="aiotask-again", label="aiotask (again)")
    on = replace(off, key="aiotask-events", label="aiotask -E", worker=events_worker)
    return off, on


async def run(args: argparse.Namespace) -> int:
    pair = variants(args.control)
    series = await compare(args, pair, args.pairs, "events", together=args.together)
    if series is None:
        return 1
    s_off, s_on = series
    cpu = ratio(s_off.cpu_us, s_on.cpu_us)
    together = ", each pair at the same time" if args.together else ""
    report(
        "events",
        f"{args.pairs} pairs of {args.n} no-op tasks on Redis{together}",
        series,
        ("drain on/off", ratio(s_on.drain, s_off.drain)),
        ("worker CPU per task off/on", cpu),
    )
    if cpu.median < BAR:
        print(f"[events] CPU ratio {cpu.median:.3f} is under {BAR}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m benchmarks.events_ratio", __doc__, "pairs", "off/on pairs")
    p.add_argument(
        "--together", action="store_true", help="drain the two variants of a pair at once"
    )
    p.add_argument(
        "--control", action="store_true", help="A/A check: the second variant without -E too"
    )
    return main_with(p, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
