"""Concurrent consumers draining a keyed queue vs an unkeyed one on PostgreSQL: a ratio.

    .venv/bin/python -m benchmarks.postgres_fair_claims [--n 4000] [--consumers 4] [--keys 10]
                                                        [--limit 8] [--pairs 3]

`--consumers` brokers (each its own pool, in one process) receive `--limit` at a time and ack
until `--n` messages are gone, once with every message keyed (`--keys` fairness keys: the fair
claims take turns on the cursor row) and once unkeyed (the plain claim), alternated `--pairs`
times. Each run has a fresh schema, dropped afterwards (AIOTASK_BENCH_POSTGRES, default
postgresql://postgres@127.0.0.1:5432/test). Reported: seconds per run and keyed/unkeyed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid

from aiotask.brokers import Outgoing
from aiotask.brokers.postgres import PostgresBroker
from aiotask.settings import Settings
from benchmarks.postgres_bench import cleanup

URL = os.environ.get("AIOTASK_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def drain(args: argparse.Namespace, keyed: bool) -> float:
    prefix = f"pgfairclaims_{uuid.uuid4().hex[:8]}"
    settings = Settings(broker_url=URL, key_prefix=prefix)
    brokers = [PostgresBroker(URL, settings) for _ in range(args.consumers)]
    try:
        for b in brokers:
            await b.connect()
        await brokers[0].publish(
            [
                Outgoing("q", b"x", f"m{i}", fair_key=f"k{i % args.keys}" if keyed else "")
                for i in range(args.n)
            ]
        )
        done = 0

        async def consume(b: PostgresBroker) -> None:
            nonlocal done
            while done < args.n:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):  # the others may have taken the rest
                        got = await b.receive(["q"], args.limit)
                        done += len(got)
                        await b.ack(got)

        started = time.perf_counter()
        await asyncio.gather(*(consume(b) for b in brokers))
        return time.perf_counter() - started
    finally:
        for b in brokers:
            await b.close()
        await cleanup("postgres", URL, prefix)


async def main(args: argparse.Namespace) -> None:
    keyed: list[float] = []
    plain: list[float] = []
    load = os.getloadavg()[0]
    for i in range(args.pairs):
        for is_keyed in (True, False) if i % 2 else (False, True):
            (keyed if is_keyed else plain).append(await drain(args, is_keyed))
    print(
        f"{args.consumers} consumers, claims of {args.limit}, {args.n} messages, "
        f"{args.keys} keys; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} "
        "at the end"
    )
    for k, p in zip(keyed, plain, strict=True):
        print(f"keyed {k:6.2f} s   unkeyed {p:6.2f} s   keyed/unkeyed {k / p:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
