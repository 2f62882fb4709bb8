"""Beat with many entries: idle CPU between slots, and how late due slots reach the broker.

    python -m benchmarks.beat_load [--entries 10000] [--every 10] [--jitter 0] [--slots 3]

All entries share one `every`. With `--jitter 0` each boundary makes every entry due at once
(the worst case); with `--jitter S` each entry's slot is sent at its own instant within S
seconds after the boundary (the same on every beat), as a spread-out schedule would be.
Prints, per boundary, how late messages were handed to the broker after their send time
(median, 99th percentile, worst), and the process CPU used while beat waited between
boundaries. Whole-process figures on a shared machine: orders of magnitude, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiotask import App
from aiotask.beat.entry import Entry
from aiotask.beat.runner import Beat
from aiotask.beat.schedule import Every

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.protocol import Message


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(url: str, entries: int, every: float, jitter: float, slots: int) -> None:
    prefix = f"beatload{uuid.uuid4().hex[:8]}"
    app = App("beatload", broker=url, key_prefix=prefix)

    @app.task(name="beatload.noop")
    async def noop() -> None:
        return None

    published: list[tuple[float, str]] = []
    publish = app.publish

    async def timed(messages: Sequence[Message]) -> None:
        await publish(messages)
        done = time.time()
        published.extend((done, m.id) for m in messages)

    app.publish = timed  # type: ignore[method-assign]
    static = {
        f"e{i}": Entry(name=f"e{i}", task="beatload.noop", schedule=Every(every), jitter=jitter)
        for i in range(entries)
    }
    async with app:
        store = (await app.result_backend()).schedule_store(app.main)
        beat = Beat(app, store, static)
        stop = asyncio.Event()
        running = asyncio.create_task(beat.run(stop))
        first = math.floor(time.time() / every) * every + every  # registered by then
        try:
            await asyncio.sleep(first - time.time() + every + jitter + 0.5)
            for n in range(2, slots + 2):
                slot = first + n * every
                due = {e.slot_id(slot): e.send_at(slot) for e in static.values()}
                cpu0, wall0 = _cpu(), time.time()
                await asyncio.sleep(slot - time.time() - 0.3)  # idle until just before
                idle = (_cpu() - cpu0) / (time.time() - wall0)
                await asyncio.sleep(jitter + 1.0)
                late = sorted((t - due[i]) * 1000 for t, i in published if i in due)
                print(
                    f"slot {n - 1}: {len(late)} of {entries} sent; late by median "
                    f"{_pct(late, 50):.1f} ms, p99 {_pct(late, 99):.1f} ms, worst "
                    f"{late[-1] if late else math.nan:.1f} ms; idle CPU before it "
                    f"{idle * 100:.2f} %"
                )
        finally:
            stop.set()
            await running
            await _cleanup(app, url, prefix)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q / 100))] if values else math.nan


async def _cleanup(app: Any, url: str, prefix: str) -> None:
    if url.startswith("redis"):
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.entries, args.every, args.jitter, args.slots))


if __name__ == "__main__":
    main()
