"""The monitoring event stream of brokers/postgres.py: a capped table plus a NOTIFY wake-up.

Records get increasing ids; a follower starts after the current newest id and reads pages in
id order. Writers trim the table to the newest EVENTS_CAP in the same transaction, so it never
grows. Without LISTEN (`?listen=false`) followers poll between EVENTS_POLL_MIN and _MAX.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiotask import _postgres
from aiotask._backoff import Backoff
from aiotask.brokers._common import records, start_after
from aiotask.brokers.base import END, EVENTS_CAP

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Sequence
    from contextlib import AbstractAsyncContextManager

    import asyncpg

log = logging.getLogger(__name__)

TOPIC = "events"
#: A follower reads at most this many events per query.
EVENTS_PAGE = 1000
EVENTS_POLL_MIN = 0.01
EVENTS_POLL_MAX = 0.25


class Events:
    """emit_events / events() on one broker's database."""

    def __init__(self, db: _postgres.Database, s: str, schema: str, listen: bool) -> None:
        self._db, self._s, self._listen = db, s, listen
        self._channel = _postgres.channel(schema, TOPIC)
        self._followers: set[asyncio.Event] = set()
        db.subscribe(TOPIC, lambda _p: self.wake())

    def wake(self) -> None:
        for event in self._followers:
            event.set()

    async def emit(self, batch: Sequence[bytes]) -> None:
        """Insert the batch and trim to the newest EVENTS_CAP: one transaction."""
        if not batch:
            return
        bodies = list(batch)
        channel = self._channel if self._listen else None
        await self._db.run(lambda c: self._emit(c, bodies, channel), "emit events")
        self.wake()

    async def _emit(
        self, conn: asyncpg.Connection, bodies: list[bytes], channel: str | None
    ) -> None:
        s = self._s
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {s}.events (body) SELECT * FROM unnest($1::bytea[])", bodies
            )
            # ids only grow (the newest row is never deleted): the oldest are the lowest ids
            await conn.execute(
                f"DELETE FROM {s}.events WHERE id <= (SELECT max(id) FROM {s}.events) - $1",
                EVENTS_CAP,
            )
            if channel is not None:
                await conn.execute("SELECT pg_notify($1, '')", channel)

    def follow(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Follow the table from its current end."""
        return records(self.follow_after(END))

    @asynccontextmanager
    async def follow_after(
        self, cursor: str | None
    ) -> AsyncIterator[AsyncIterator[tuple[str, bytes]]]:
        """Follow the table after row `cursor` (see EventLog)."""
        s = self._s
        bounds = await self._db.run(
            lambda c: c.fetchrow(
                f"SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM {s}.events"
            ),
            "read events",
        )
        oldest, newest = (int(bounds[0]), int(bounds[1])) if bounds else (0, 0)
        event = asyncio.Event()
        self._followers.add(event)
        feed = self._feed(event, start_after(cursor, oldest, newest, log))
        try:
            yield feed
        finally:
            self._followers.discard(event)
            await feed.aclose()

    async def _feed(
        self, event: asyncio.Event, last: int
    ) -> AsyncGenerator[tuple[str, bytes], None]:
        poll = Backoff(EVENTS_POLL_MIN, EVENTS_POLL_MAX)
        s = self._s
        while True:
            listening = await self._db.listening()
            event.clear()
            rows = await self._db.run(functools.partial(_page, s=s, after=last), "read events")
            if rows:
                poll.reset()
                last = int(rows[-1][0])
                for row in rows:
                    yield str(row[0]), bytes(row[1])
                continue
            pause = _postgres.IDLE_MAX if listening else poll.next_delay()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await event.wait()


async def _page(conn: asyncpg.Connection, *, s: str, after: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT id, body FROM {s}.events WHERE id > $1 ORDER BY id LIMIT $2", after, EVENTS_PAGE
    )
