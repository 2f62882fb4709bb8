"""The floor: a raw redis-py loop that issues only the Redis commands a task strictly needs.

Enqueue is one XADD (pipelined for a batch). The worker reads with XREADGROUP, COUNT the
prefetch aiotask's worker runs with (2 x concurrency), and, per batch of messages, pipelines
SET result + PUBLISH + XACK. A round trip is XADD -> XREADGROUP ->
SET + PUBLISH + XACK -> the producer's pub/sub wake-up. No serialization beyond a task id, no
retries, no leases: it is the distance to the physical limit, not a framework.

Worker: `python -m benchmarks.workloads.floor` (stops on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any

import redis.asyncio as aioredis

from benchmarks.common import CPU_N, SLEEP_S, NotSupported, concurrency, ns, redis_url, spin

GROUP = "g"


def keys() -> tuple[str, str, str]:
    """(stream, result key prefix, completion channel)"""
    n = ns()
    return f"{n}:stream", f"{n}:r:", f"{n}:done"


class FloorAdapter:
    batch_note = "pipelined XADD"

    def __init__(self) -> None:
        self.r = aioredis.Redis.from_url(redis_url())
        self.stream, self.result_prefix, self.channel = keys()
        self.pubsub: Any = None

    async def start(self) -> None:
        with contextlib.suppress(aioredis.ResponseError):  # BUSYGROUP: the worker was first
            await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)

    async def close(self) -> None:
        if self.pubsub is not None:
            await self.pubsub.aclose()
        await self.r.aclose()

    async def send(self, kind: str) -> str:
        tid = uuid.uuid4().hex
        await self.r.xadd(self.stream, {"id": tid, "k": kind})
        return tid

    async def send_many(self, kind: str, count: int) -> list[str]:
        tids = [uuid.uuid4().hex for _ in range(count)]
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in tids:
                pipe.xadd(self.stream, {"id": tid, "k": kind})
            await pipe.execute()
        return tids

    async def done_flags(self, handles: list[str]) -> list[bool]:
        async with self.r.pipeline(transaction=False) as pipe:
            for tid in handles:
                pipe.exists(self.result_prefix + tid)
            return [bool(x) for x in await pipe.execute()]

    async def roundtrip(self) -> None:
        if self.pubsub is None:
            self.pubsub = self.r.pubsub()
            await self.pubsub.subscribe(self.channel)
            await self.pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        tid = await self.send("noop")
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=10.0)
            if msg is None:
                raise TimeoutError("no completion published")
            if msg["data"] == tid.encode():
                return

    async def chord(self, size: int) -> None:
        raise NotSupported("the floor has no canvas")


def make_adapter() -> FloorAdapter:
    return FloorAdapter()


async def _settle(r: aioredis.Redis, done: list[tuple[bytes, bytes]]) -> None:
    stream, result_prefix, channel = keys()
    async with r.pipeline(transaction=False) as pipe:
        for _msg_id, tid in done:
            pipe.set(result_prefix + tid.decode(), b"null", ex=3600)
            pipe.publish(channel, tid)
        pipe.xack(stream, GROUP, *(m for m, _ in done))
        await pipe.execute()


async def worker() -> None:
    stream, _, _ = keys()
    r = aioredis.Redis.from_url(redis_url())
    with contextlib.suppress(aioredis.ResponseError):
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sem = asyncio.Semaphore(concurrency())
    prefetch = 2 * concurrency()  # as aiotask's worker in the harness (--prefetch)
    running: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def slow(msg_id: bytes, tid: bytes, kind: bytes) -> None:
        try:
            if kind == b"sleep50":
                await asyncio.sleep(SLEEP_S)
            else:
                spin(CPU_N)
            await _settle(r, [(msg_id, tid)])
        finally:
            sem.release()

    while not stop.is_set():
        got = await r.xreadgroup(GROUP, "c1", {stream: ">"}, count=prefetch, block=500)
        fast: list[tuple[bytes, bytes]] = []
        for _name, entries in got or []:
            for msg_id, fields in entries:
                kind = fields[b"k"]
                if kind == b"noop":
                    fast.append((msg_id, fields[b"id"]))
                    continue
                await sem.acquire()
                t = asyncio.create_task(slow(msg_id, fields[b"id"], kind))
                running.add(t)
                t.add_done_callback(running.discard)
        if fast:
            await _settle(r, fast)
    if running:
        await asyncio.wait(running, timeout=10)
    await r.aclose()


if __name__ == "__main__":
    asyncio.run(worker())
