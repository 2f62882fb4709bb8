"""Enqueue rates on PostgreSQL, aiotask beside PgQueuer and Oban for Python, alternated in
small blocks so that every framework sees the same load.

    .venv-bench/bin/python -m benchmarks.postgres_enqueue [--rounds 60] [--peers pgqueuer,oban]
        [--base-python /work/main/.venv/bin/python] [--payload 0]

The harness (`benchmarks.harness --postgres`) runs each framework in its own process at its
own time: on a shared machine whose fsync latency and CPU load swing from second to second,
one framework's repeats moved 10x and the enqueue ratios flipped between runs. Here one
driver takes turns: per round, each side sends a block (`--one` sends one at a time, each
awaited, or one batch of `--batch`), the order rotated every round; the ratio aiotask /
peer is taken per round, from blocks seconds apart, and its median reported with its
quartiles. aiotask and PgQueuer run in this process; Oban for Python needs Python >= 3.12,
so it runs in .venv-bench/oban, in a process that sends each block on this driver's command
and times it itself (the pipe is outside the timing). `--base-python` adds aiotask from
another checkout's venv the same way (say main's): the before/after ratio of a change.

Each side uses its framework's public API and default durability (each publish waits for
the WAL flush), in a schema of its own, dropped afterwards (benchmarks/_enqueue_sides.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from pathlib import Path
from typing import Protocol

from benchmarks._enqueue_sides import SIDES
from benchmarks.common import DEFAULT_POSTGRES

HERE = Path(__file__).resolve().parent
OBAN_PY = HERE.parent / ".venv-bench" / "oban" / "bin" / "python"
#: the row key of `--base-python`'s aiotask
BASE = "aiotask-base"


class Timed(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def one(self, n: int) -> float: ...
    async def batch(self, n: int) -> float: ...


class Remote:
    """A side in another interpreter (benchmarks/_enqueue_sides.py run by path)."""

    def __init__(self, python: str, kind: str, schema: str, url: str, payload: int) -> None:
        self.argv = [python, str(HERE / "_enqueue_sides.py"), kind, schema, url, str(payload)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd="/"
        )
        if await self._line() != "ready":
            raise RuntimeError(f"{self.argv[2]} side did not start")

    async def _line(self) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"{self.argv[2]} side exited ({await self.proc.wait()})")
        return line.decode().strip()

    async def _ask(self, what: str, n: int) -> float:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{what} {n}\n".encode())
        await self.proc.stdin.drain()
        return float(await self._line())

    async def one(self, n: int) -> float:
        return await self._ask("one", n)

    async def batch(self, n: int) -> float:
        return await self._ask("batch", n)

    async def close(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


async def drop(url: str, schemas: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for s in schemas:
            await conn.execute('DROP SCHEMA IF EXISTS "{}" CASCADE'.format(s.replace('"', "")))
    finally:
        await conn.close()


async def rows_bytes(url: str, tables: dict[str, str]) -> dict[str, float]:
    """Average bytes of a queued row (pg_column_size of the whole row) per side."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {
            label: float(
                await conn.fetchval(
                    f"SELECT coalesce(avg(pg_column_size(t.*)), 0) FROM {t} t"  # noqa: S608
                )
            )
            for label, t in tables.items()
        }
    finally:
        await conn.close()


async def phase(sides: dict[str, Timed], what: str, n: int, rounds: int) -> dict[str, list[float]]:
    """`rounds` rounds of one block per side, the order rotated; tasks/s per block."""
    labels = list(sides)
    rates: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        k = r % len(labels)
        for label in labels[k:] + labels[:k]:
            side = sides[label]
            took = await (side.one(n) if what == "one" else side.batch(n))
            rates[label].append(n / took)
    return rates


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def report(what: str, rates: dict[str, list[float]], before: str, after: str) -> None:
    print(f"\n== enqueue {what} (load average {before} -> {after})")
    for label, xs in rates.items():
        lo, mid, hi = quartiles(xs)
        print(
            f"{label:14s} tasks/s median {mid:9.0f}  quartiles {lo:8.0f}-{hi:8.0f}"
            f"  range {min(xs):8.0f}-{max(xs):8.0f}"
        )
    for peer in [k for k in rates if k != "aiotask"]:
        ratios = [a / b for a, b in zip(rates["aiotask"], rates[peer], strict=True)]
        lo, mid, hi = quartiles(ratios)
        ahead = sum(r > 1 for r in ratios)
        print(
            f"aiotask/{peer:12s} per-round ratio median {mid:.2f}  quartiles {lo:.2f}-{hi:.2f}"
            f"  range {min(ratios):.2f}-{max(ratios):.2f}  aiotask ahead in {ahead}/{len(ratios)}"
        )


async def main(args: argparse.Namespace) -> int:
    tag = uuid.uuid4().hex[:8]
    schemas = {k: f"enq_{tag}_{k.replace('-', '_')}" for k in ["aiotask", *args.peers]}
    sides: dict[str, Timed] = {}
    for label, schema in schemas.items():
        if label == "oban":
            sides[label] = Remote(str(OBAN_PY), "oban", schema, args.url, args.payload)
        elif label == BASE:
            sides[label] = Remote(args.base_python, "aiotask", schema, args.url, args.payload)
        else:
            sides[label] = SIDES[label](schema, args.url, args.payload)
    started: list[Timed] = []
    try:
        for side in sides.values():
            await side.start()
            started.append(side)
        for side in sides.values():  # connections, prepared statements
            await side.one(5)
            await side.batch(50)
        for what, n in (("one", args.one), ("batch", args.batch)):
            if what not in args.workloads:
                continue
            before = load()
            rates = await phase(sides, what, n, args.rounds)
            report(f"{what} ({n} per block, {args.rounds} rounds)", rates, before, load())
        tables = {
            "aiotask": f'"{schemas["aiotask"]}".messages',
            **({"pgqueuer": f'"{schemas["pgqueuer"]}".pgqueuer'} if "pgqueuer" in sides else {}),
            **({"oban": f'"{schemas["oban"]}".oban_jobs'} if "oban" in sides else {}),
            **({BASE: f'"{schemas[BASE]}".messages'} if BASE in sides else {}),
        }
        sizes = await rows_bytes(args.url, tables)
        print("\nbytes per queued row: " + ", ".join(f"{k} {v:.0f}" for k, v in sizes.items()))
    finally:
        for side in reversed(started):
            await side.close()
        await drop(args.url, list(schemas.values()))
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--url", default=DEFAULT_POSTGRES)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--one", type=int, default=50, help="sends per one-at-a-time block")
    p.add_argument("--batch", type=int, default=500, help="tasks in a batch block")
    p.add_argument("--payload", type=int, default=0, help="bytes of argument per job")
    p.add_argument("--peers", default="pgqueuer,oban", help="pgqueuer, oban (comma-separated)")
    p.add_argument("--workloads", default="one,batch")
    p.add_argument("--base-python", help="also aiotask from this interpreter's install")
    args = p.parse_args(argv)
    args.peers = [x for x in args.peers.split(",") if x]
    if args.base_python:
        args.peers.append(BASE)
    args.workloads = args.workloads.split(",")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
