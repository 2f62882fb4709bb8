"""The monitoring event stream of brokers/redis_streams.py: one Client Stream, MAXLEN ~ capped.

`{prefix}:events` holds one entry per record (field `e`; aiotask.events packs one flush of an
emitter, up to 1500 events, per record), trimmed with MAXLEN ~ EVENTS_CAP on every XADD.
Followers XREAD BLOCK from the id that was last when they subscribed, or from the entry id a
resuming follower (the dashboard's history) read last.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiotask.brokers.base import END

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

    from aiotask._redis.client import Client

log = logging.getLogger(__name__)

#: A follower's XREAD waits this long (ms) per call, and takes at most this many entries.
BLOCK_MS = 1000
PAGE = 100
#: Guard against a hung server, on top of BLOCK_MS.
READ_GUARD_S = 10.0


def key(prefix: str) -> str:
    return f"{prefix}:events"


def xadds(stream: str, cap: int, batch: Sequence[bytes]) -> list[tuple[Any, ...]]:
    """One XADD per record, for one pipeline."""
    return [("XADD", stream, "MAXLEN", "~", cap, "*", "e", record) for record in batch]


async def emit(
    client: Client,
    cmds: list[tuple[Any, ...]],
    timeout: float,
    pipeline: Callable[[list[tuple[Any, ...]]], Awaitable[Any]],
) -> None:
    """Send the XADDs: one (a flush's usual size) as a plain command, more in `pipeline`.

    A pipeline object costs a worker about as much CPU again as the round trip (~0.1 ms)."""
    if len(cmds) > 1:
        await pipeline(cmds)
        return
    async with asyncio.timeout(timeout):
        await client.execute_command(*cmds[0])


async def end_id(client: Client, stream: str) -> bytes | str:
    """The id of the newest entry ("0-0" for an empty or missing stream)."""
    newest: Any = await client.xrevrange(stream, count=1)
    return newest[0][0] if newest else "0-0"


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def start_id(client: Client, stream: str, cursor: str | None) -> bytes | str:
    """Where a follower starts (see EventLog): the end, "0-0" (all kept), or the cursor
    (logged when the stream was trimmed past it)."""
    if cursor == END:
        return await end_id(client, stream)
    if cursor is None:
        return "0-0"
    try:
        last = _id(cursor)
    except ValueError:
        log.warning("events: position %r is not in this stream; reading all it keeps", cursor)
        return "0-0"
    oldest: Any = await client.xrange(stream, count=1)
    if oldest and _id(oldest[0][0]) > last:
        kept: Any = await client.xrange(stream, min=cursor, max=cursor, count=1)
        if not kept:
            log.warning(
                "events: the stream was trimmed past position %s; resuming from the oldest "
                "entry kept (%s): events in between may be lost",
                cursor,
                oldest[0][0].decode() if isinstance(oldest[0][0], bytes) else oldest[0][0],
            )
    return cursor


@asynccontextmanager
async def follow_after(
    client: Callable[[], Client],
    prefix: str,
    cursor: str | None,
    retrying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
) -> AsyncIterator[AsyncIterator[tuple[str, bytes]]]:
    """The broker's `events_after`: follow `{prefix}:events` after entry `cursor`."""
    redis, stream = client(), key(prefix)
    start = await retrying(lambda: start_id(redis, stream, cursor))
    feed = follow(redis, stream, start, retrying)
    try:
        yield feed
    finally:
        await feed.aclose()


async def follow(
    client: Client,
    stream: str,
    start: bytes | str,
    retrying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
) -> AsyncGenerator[tuple[str, bytes], None]:
    """Every record after entry `start`, live; reconnects through an outage (broker's rule)."""
    last = start

    async def read() -> Any:
        async with asyncio.timeout(BLOCK_MS / 1000 + READ_GUARD_S):
            return await client.xread({stream: last}, count=PAGE, block=BLOCK_MS)

    while True:
        reply = await retrying(read)
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                record = fields.get(b"e")
                if record is not None:
                    yield (entry_id.decode() if isinstance(entry_id, bytes) else entry_id), record
