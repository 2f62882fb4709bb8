"""The Redis result backend's waits: one pub/sub connection, one reader task, batched
(UN)SUBSCRIBE. Split from backends/redis.py: only waits need it, stores and reads do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from functools import partial
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from aiotask._backoff import Backoff
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from redis.asyncio.connection import AbstractConnection

    from aiotask.backends._redis_replies import Replies

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError)


def _pass_on(fut: asyncio.Future[bytes], pushed: asyncio.Future[bytes]) -> None:
    """A push that came during a wait answers it."""
    if not fut.done() and not pushed.cancelled():
        fut.set_result(pushed.result())


async def _read_unless(
    read: Awaitable[bytes | None], message: asyncio.Future[bytes]
) -> bytes | None:
    """The read's reply; None once `message` resolved first (the read is then dropped)."""
    reading = asyncio.ensure_future(read)
    try:
        await asyncio.wait((reading, message), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not reading.done():
            reading.cancel()
    if message.done() or reading.cancelled():
        if not reading.cancelled():
            reading.exception()  # retrieved: a failed read the message made moot is not logged
        return None
    return reading.result()


class Subscriber:
    """One pub/sub connection for any number of waits; one reader task resolves their futures.

    SUBSCRIBE and UNSUBSCRIBE are batched per loop iteration. A channel is unsubscribed only
    once its subscription was confirmed and no wait uses it, so replies stay in order.
    """

    def __init__(
        self,
        make_connection: Callable[[], AbstractConnection],
        fetch_many: Callable[[Sequence[str]], Awaitable[list[bytes | None]]],
        replies: Replies | None = None,
    ) -> None:
        self._make = make_connection
        #: this process's reply channel and expectations (None: no pushed results)
        self._replies = replies
        #: a future that never resolves: the reply channel's standing "waiter" (kept subscribed)
        self._keep: asyncio.Future[bytes] | None = None
        self._fetch_many = fetch_many
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, set[asyncio.Future[bytes]]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._to_sub: set[bytes] = set()
        self._to_unsub: set[bytes] = set()
        self._flush: asyncio.Handle | None = None
        self._reconnect = False
        self._closed = False  # after close(): no new subscriptions, connections or tasks
        self._tasks: set[asyncio.Task[None]] = set()

    def listen_replies(self) -> None:
        """Subscribe to the reply channel (once; it stays subscribed until close)."""
        replies = self._replies
        if replies is None or self._keep is not None or self._closed:
            return
        self._keep = self._add(asyncio.get_running_loop(), replies.channel)

    def _add(self, loop: asyncio.AbstractEventLoop, channel: bytes) -> asyncio.Future[bytes]:
        """A future resolved by the channel's next message; subscribes if not yet."""
        if self._reader is None:
            self._reader = loop.create_task(self._read_loop())
        fut: asyncio.Future[bytes] = loop.create_future()
        self._waiters.setdefault(channel, set()).add(fut)
        self._to_unsub.discard(channel)
        if channel not in self._confirmed:
            self._confirmed[channel] = loop.create_future()
            self._to_sub.add(channel)
            self._schedule()
        return fut

    async def wait(
        self,
        channel: bytes,
        check: Callable[[], Awaitable[bytes | None]],
        pushed: asyncio.Future[bytes] | None = None,
    ) -> bytes:
        """The record published on `channel`; `pushed`, the expected push on the reply
        channel, answers too (whichever comes first: subscribe, read or push)."""
        fut = self._add(asyncio.get_running_loop(), channel)
        confirmed = self._confirmed[channel]
        try:
            if pushed is None:
                await asyncio.shield(confirmed)
                raw = await check()  # read after subscribe: a record stored before is seen
            else:
                pushed.add_done_callback(partial(_pass_on, fut))
                await asyncio.wait((confirmed, fut), return_when=asyncio.FIRST_COMPLETED)
                if fut.done():
                    return fut.result()
                raw = await _read_unless(check(), fut)
                if fut.done():
                    return fut.result()
            if raw is not None and raw[:1] == b"1":
                return raw[1:]
            return await fut
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[channel]
                    self._to_unsub.add(channel)
                    self._schedule()

    def _schedule(self) -> None:
        if self._flush is None and not self._closed:
            self._flush = asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush = None
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._send_changes())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_changes(self) -> None:
        subs = []
        for ch in self._to_sub:
            if ch in self._waiters:
                subs.append(ch)
            else:  # its waits ended before the flush: never subscribed
                self._confirmed.pop(ch, None)
        self._to_sub.clear()
        unsubs = []
        for ch in list(self._to_unsub):
            confirmed = self._confirmed.get(ch)
            if ch in self._waiters or confirmed is None:
                self._to_unsub.discard(ch)
            elif confirmed.done():  # else: after its confirmation, so replies stay ordered
                unsubs.append(ch)
                self._to_unsub.discard(ch)
                del self._confirmed[ch]
        try:
            conn = await self._connection()
            if self._closed:
                return
            if unsubs:
                await conn.send_command("UNSUBSCRIBE", *unsubs)
            if subs:
                await conn.send_command("SUBSCRIBE", *subs)
        except (*_ERRORS, BrokerConnectionError) as exc:
            logger.debug("pub/sub send failed, the reader reconnects: %s", exc)

    async def _connection(self) -> AbstractConnection:
        async with self._lock:
            if self._closed:
                raise BrokerConnectionError("the Redis result backend was closed")
            if self._conn is None:
                conn = self._make()
                await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                if self._reconnect and self._confirmed:
                    # subscribe again, then re-read the keys: a notification may be lost
                    channels = list(self._confirmed)
                    await conn.send_command("SUBSCRIBE", *channels)
                    self._spawn_recheck(channels)
                self._reconnect = True
            return self._conn

    def _spawn_recheck(self, channels: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        for ch in channels:
            if self._confirmed[ch].done():
                self._confirmed[ch] = loop.create_future()
        task = loop.create_task(self._recheck(channels))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self, channels: list[bytes]) -> None:
        await asyncio.gather(*(asyncio.shield(self._confirmed[ch]) for ch in channels))
        raws = await self._fetch_many([ch.decode() for ch in channels])
        for ch, raw in zip(channels, raws, strict=True):
            if raw is not None and raw[:1] == b"1":
                self._resolve(ch, raw[1:])

    async def _read_loop(self) -> None:
        backoff = Backoff()  # no deadline: waits fail by their own timeouts, not this loop
        while True:
            try:
                conn = await self._connection()
                reply = await conn.read_response(timeout=math.inf)
                backoff.reset()
            except _ERRORS as exc:
                if not backoff.failing:
                    logger.warning("result backend pub/sub connection lost, reconnecting: %s", exc)
                await self._drop()
                await backoff.sleep()
                continue
            self._dispatch(reply)

    def _dispatch(self, reply: list[Any]) -> None:
        kind, channel = reply[0], reply[1]
        if kind == b"message":
            replies = self._replies
            if replies is not None and channel == replies.channel:
                replies.pushed(reply[2])
            else:
                self._resolve(channel, reply[2])
        elif kind == b"subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            if channel not in self._waiters and channel in self._to_unsub:
                self._schedule()

    def _resolve(self, channel: bytes, data: bytes) -> None:
        for fut in self._waiters.get(channel, ()):
            if not fut.done():
                fut.set_result(data)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect()

    async def close(self) -> None:
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        tasks = [t for t in (self._reader, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reader = None
        if self._replies is not None:
            self._replies.close()
        if self._keep is not None:  # the reply channel's standing waiter: nobody awaits it
            self._keep.cancel()
        closed = BrokerConnectionError("the Redis result backend was closed during a wait")
        for fut in [f for futs in self._waiters.values() for f in futs]:
            if not fut.done():
                fut.set_exception(closed)
        await self._drop()
