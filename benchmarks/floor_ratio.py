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

import argparse
import asyncio
import sys

from benchmarks.frameworks import FRAMEWORKS
from benchmarks.interleave import CpuRunner, interleave, plan, ratio, summary

#: issue 19's target: aiotask drains at least this share of the floor's rate
BAR = 0.9


async def run(args: argparse.Namespace) -> int:
    runner = CpuRunner(plan(args.n), args.redis_url, args.amqp_url)
    a, f = FRAMEWORKS["aiotask"], FRAMEWORKS["floor"]
    series = await interleave(runner, (a, f), args.rounds, "floor")
    if series is None:
        return 1
    sa, sf = series[a.key], series[f.key]
    drain = ratio(sa.drain, sf.drain)
    cpu = ratio(sf.cpu_us, sa.cpu_us)
    print(
        f"[floor] {args.rounds} rounds of {args.n} no-op tasks on Redis\n"
        f"[floor] {summary(sa)}\n"
        f"[floor] {summary(sf)}\n"
        f"[floor] drain aiotask/floor: {drain} (bar {BAR})\n"
        f"[floor] worker CPU per task floor/aiotask: {cpu}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor_ratio", description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="tasks per drain")
    p.add_argument("--rounds", type=int, default=5, help="rounds (each runs both once)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
