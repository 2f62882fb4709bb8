"""The monitoring event stream of brokers/redis_streams.py: one Redis Stream, capped.

`{prefix}:events` holds one entry per flush of an emitter: field `e` is the batch's events,
each a JSON object, separated by newlines (JSON text never holds a raw newline), and field `n`
their number. One XADD per flush keeps the server's cost per event tiny (a worker emits about
three events per task). The stream is trimmed exactly to ceil(EVENTS_CAP / batch size) entries
on each XADD, so it keeps about EVENTS_CAP events (at most about twice that when batch sizes
vary). Followers XREAD BLOCK from the id that was last when they subscribed.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

    from redis.asyncio import Redis

#: A follower's XREAD waits this long (ms) per call, and takes at most this many entries.
BLOCK_MS = 1000
PAGE = 100
#: Guard against a hung server, on top of BLOCK_MS.
READ_GUARD_S = 10.0


def key(prefix: str) -> str:
    return f"{prefix}:events"


def xadd(stream: str, cap: int, batch: Sequence[bytes]) -> tuple[Any, ...]:
    """The one XADD command of a batch."""
    keep = max(1, math.ceil(cap / len(batch)))
    return ("XADD", stream, "MAXLEN", "=", keep, "*", "n", len(batch), "e", b"\n".join(batch))


async def end_id(client: Redis, stream: str) -> bytes | str:
    """The id of the newest entry ("0-0" for an empty or missing stream)."""
    newest: Any = await client.xrevrange(stream, count=1)
    return newest[0][0] if newest else "0-0"


async def follow(
    client: Redis,
    stream: str,
    start: bytes | str,
    retrying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
) -> AsyncGenerator[bytes, None]:
    """Every event after entry `start`, live; reconnects through an outage (the broker's rule)."""
    last = start

    async def read() -> Any:
        async with asyncio.timeout(BLOCK_MS / 1000 + READ_GUARD_S):
            return await client.xread({stream: last}, count=PAGE, block=BLOCK_MS)

    while True:
        reply = await retrying(read)
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                for body in (fields.get(b"e") or b"").split(b"\n"):
                    if body:
                        yield body
