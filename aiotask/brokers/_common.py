"""What every broker decides the same way: delivery limits, priorities, dead-letter caps, tokens.

Kept here so the four brokers word their dead-letter reasons alike and clamp alike; each broker
still does the I/O its own way.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

from aiotask.brokers.base import END

if TYPE_CHECKING:
    import logging
    from collections.abc import AsyncIterator, Iterable
    from contextlib import AbstractAsyncContextManager

    from aiotask.brokers.base import Delivery

T = TypeVar("T")

#: Dead letters kept per queue (approximately, on Redis); older ones are dropped.
DEAD_LETTER_CAP = 10_000
#: Highest priority a message may carry; 0 is the lowest.
MAX_PRIORITY = 9


def exhausted(deliveries: int, max_deliveries: int) -> bool:
    """True when a message already delivered `deliveries` times must not be delivered again."""
    return deliveries >= max_deliveries


def exhausted_reason(deliveries: int, max_deliveries: int) -> str:
    """The dead-letter reason for a message that used up its deliveries (same on every broker)."""
    return f"delivered {deliveries} times without being settled (max_deliveries={max_deliveries})"


def clamp_priority(priority: int, highest: int = MAX_PRIORITY) -> int:
    """A priority inside 0..highest (out-of-range values are clamped, never refused)."""
    return min(max(priority, 0), highest)


def text(value: bytes | str) -> str:
    """A server-side string (bytes from redis/sqlite) as text; undecodable bytes replaced."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def tokens(deliveries: Iterable[Delivery], kind: type[T]) -> list[T]:
    """The broker handles of deliveries this broker made; others (foreign) are skipped."""
    return [d.token for d in deliveries if isinstance(d.token, kind)]


@asynccontextmanager
async def records(
    positioned: AbstractAsyncContextManager[AsyncIterator[tuple[str, bytes]]],
) -> AsyncIterator[AsyncIterator[bytes]]:
    """`EventStream.events()` from an `EventLog.events_after(END)` feed: the records alone."""
    async with positioned as feed:
        yield (record async for _position, record in feed)


def start_after(cursor: str | None, oldest: int, newest: int, log: logging.Logger) -> int:
    """Where an `EventLog` over a table of growing integer ids starts reading (the id to read
    after): END is the newest, None is 0 (all kept), a cursor is itself, logged when the table
    was trimmed past it; a cursor that is not one of this table's ids means 0, logged too."""
    if cursor == END:
        return newest
    if cursor is None:
        return 0
    try:
        last = int(cursor)
    except ValueError:
        last = -1
    if last < 0 or last > newest:
        log.warning("events: position %r is not in this stream; reading all it keeps", cursor)
        return 0
    if oldest > last + 1:  # (a rolled-back insert leaves a hole in the ids: "may")
        log.warning(
            "events: the stream was trimmed past position %s; resuming from the oldest entry "
            "kept (%s): events in between may be lost",
            last,
            oldest,
        )
    return last
