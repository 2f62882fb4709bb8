"""The enqueuing sides of benchmarks/postgres_enqueue.py, and a server that runs one of them
in another interpreter, block by block, on the driver's command.

Stdlib-only at import, and no `benchmarks.*` import: this file also runs by path
(`python benchmarks/_enqueue_sides.py KIND SCHEMA URL PAYLOAD`) under Oban's Python 3.12
virtualenv, or under another checkout's venv (`--base-python`), where `aiotask` must come
from that venv's install and not from this checkout (running by path puts benchmarks/, not
the repository root, first on sys.path).

Each side enqueues no-op jobs through its framework's public API, with the framework's
default durability (every publish waits for the WAL flush), in a schema of its own:

- aiotask: `noop.send()` one at a time, `noop.send_batch(...)` for a batch;
- PgQueuer: `Queries.enqueue(entrypoint, payload)`, with lists for a batch;
- Oban for Python: `Oban.enqueue(Noop.new(args))`, `enqueue_many` for a batch.

`payload` bytes ride in each job: aiotask's task argument (a str), PgQueuer's payload
(bytes), an Oban job's args ({"p": str}); 0: no argument (the harness's no-op).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any


class Side:
    """One framework's producer: times `n` sends one at a time, or one batch of `n`."""

    kind = ""

    def __init__(self, schema: str, url: str, payload: int) -> None:
        self.schema = schema
        self.url = url
        self.payload = payload

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def send(self) -> None:
        raise NotImplementedError

    async def send_batch(self, n: int) -> None:
        raise NotImplementedError

    async def one(self, n: int) -> float:
        """Seconds for `n` sends, each awaited before the next."""
        t0 = time.perf_counter()
        for _ in range(n):
            await self.send()
        return time.perf_counter() - t0

    async def batch(self, n: int) -> float:
        """Seconds for one batch of `n`."""
        t0 = time.perf_counter()
        await self.send_batch(n)
        return time.perf_counter() - t0


class AiotaskSide(Side):
    kind = "aiotask"

    async def start(self) -> None:
        from aiotask import App

        self.app = App("enqbench", broker=self.url, backend=self.url, key_prefix=self.schema)

        @self.app.task(name="noop")
        async def noop(*args: str) -> None:
            return None

        self.task = noop
        self.args: tuple[str, ...] = ("x" * self.payload,) if self.payload else ()
        await self.app.connect()

    async def close(self) -> None:
        await self.app.close()

    async def send(self) -> None:
        await self.task.send(*self.args)

    async def send_batch(self, n: int) -> None:
        await self.task.send_batch([self.args] * n)


class PgQueuerSide(Side):
    kind = "pgqueuer"

    async def start(self) -> None:
        # PgQueuer reads its object names from the environment once, at first use
        os.environ["PGQUEUER_SCHEMA"] = self.schema
        os.environ["PGQUEUER_CHANNEL"] = f"{self.schema}_ch"
        import asyncpg
        from pgqueuer import AsyncpgPoolDriver, Queries

        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=10)
        self.queries = Queries(AsyncpgPoolDriver(self.pool))
        await self.queries.install()
        self.body: bytes | None = b"x" * self.payload if self.payload else None

    async def close(self) -> None:
        self.pool.terminate()

    async def send(self) -> None:
        await self.queries.enqueue("noop", self.body)

    async def send_batch(self, n: int) -> None:
        await self.queries.enqueue(["noop"] * n, [self.body] * n, [0] * n)


class ObanSide(Side):
    kind = "oban"

    async def start(self) -> None:
        from oban import Oban, worker
        from oban.schema import install

        @worker(queue="default")
        class Noop:
            async def process(self, job: Any) -> None:
                return None

        self.worker: Any = Noop
        self.args: dict[str, str] = {"p": "x" * self.payload} if self.payload else {}
        self.pool = await Oban.create_pool(self.url)
        async with self.pool.connection() as conn:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await install(self.pool, prefix=self.schema)
        self.oban = Oban(pool=self.pool, prefix=self.schema)  # no queues: a client only
        await self.oban.start()

    async def close(self) -> None:
        await self.oban.stop()
        await self.pool.close()

    async def send(self) -> None:
        await self.oban.enqueue(self.worker.new(self.args))

    async def send_batch(self, n: int) -> None:
        await self.oban.enqueue_many([self.worker.new(self.args) for _ in range(n)])


SIDES: dict[str, type[Side]] = {s.kind: s for s in (AiotaskSide, PgQueuerSide, ObanSide)}


async def serve(side: Side) -> None:
    """Answer the driver's lines on stdin: `one N` / `batch N` -> seconds; `quit`."""
    await side.start()
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return
            n = int(line[1])
            took = await (side.one(n) if line[0] == "one" else side.batch(n))
            print(f"{took!r}", flush=True)
    finally:
        await side.close()


if __name__ == "__main__":
    kind, schema, url, payload = sys.argv[1:5]
    asyncio.run(serve(SIDES[kind](schema, url, int(payload))))
