"""Drain of one aiotask worker against the raw redis-py floor, interleaved in one run (Redis).

    python -m benchmarks.floor_ratio               # 5 rounds of 20,000 no-op tasks, ~1-2 min
    python -m benchmarks.floor_ratio --rounds 3 --n 10000

The floor (benchmarks/workloads/floor.py) reads with XREADGROUP (COUNT = aiotask's prefetch)
and settles each batch with one pipeline of SET + PUBLISH + XACK: the Redis commands a task
strictly needs, in plain redis-py. The figures: aiotask's drain rate as a ratio of the floor's
(medians; issue 19's bar: >= 0.9) and the worker CPU per task of each (benchmarks/interleave.py).
Exit code 1 when a measurement fails; the ratio is reported, not enforced (the machine is shared).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.frameworks import FRAMEWORKS
from benchmarks.interleave import compare, main_with, parser, ratio, report

if TYPE_CHECKING:
    import argparse

#: issue 19's target: aiotask drains at least this share of the floor's rate
BAR = 0.9


async def run(args: argparse.Namespace) -> int:
    series = await compare(args, (FRAMEWORKS["aiotask"], FRAMEWORKS["floor"]), args.rounds, "floor")
    if series is None:
        return 1
    sa, sf = series
    report(
        "floor",
        f"{args.rounds} rounds of {args.n} no-op tasks on Redis",
        series,
        (f"drain aiotask/floor (bar {BAR})", ratio(sa.drain, sf.drain)),
        ("worker CPU per task floor/aiotask", ratio(sf.cpu_us, sa.cpu_us)),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "python -m benchmarks.floor_ratio", __doc__, "rounds", "rounds (each runs both once)"
    )
    return main_with(p, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
