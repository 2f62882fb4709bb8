"""One dedicated, pipelined redis-py connection for the result backend's hot commands.

A round trip through redis-py's client takes a pool acquire (redis-py 5-7 check the
connection with a zero-timeout read, two event-loop hops), retry and observability layers
and a pool release, on both the worker's store and the producer's read: about as long as
the server's reply on a local network (docs/benchmarks.md). Here a command is packed by the
connection's own packer and written at once; one reader task reads the replies in order
with the connection's own parser and hands each to its callback. No caller reads the socket,
so a cancelled caller cannot leave a reply unread: the reply is read and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio.connection import AbstractConnection

    #: a command's callback: (reply, None), or (None, the error)
    Done = Callable[[Any, BaseException | None], None]

_ERRORS = (RedisError, OSError)


class Unsupported(RuntimeError):
    """This redis-py's connection keeps no `_writer` (a version after 8): use the pool."""


class Pipe:
    """Commands written as they come, replies read in order by one reader task.

    Each command's callback gets (reply, None), or (None, error) for an error reply or a
    lost connection; it runs in the reader task, so it must not block.
    """

    def __init__(self, make_connection: Callable[[], AbstractConnection]) -> None:
        self._make = make_connection
        self._conn: AbstractConnection | None = None
        #: the callbacks of the commands written on `_conn`, in order
        self._sent: deque[Done] = deque()
        #: commands submitted while (re)connecting, written once connected
        self._queued: list[tuple[tuple[Any, ...], Done]]
        self._queued = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting = False
        self._closed = False
        #: the connection has no stream writer to write to (see _writer): every call fails
        self._unsupported = False

    def submit(self, args: tuple[Any, ...], done: Done) -> None:
        """Write the command now (or once connected); `done` gets its reply or error."""
        if self._closed:
            done(None, RedisConnectionError("the Redis result backend was closed"))
            return
        if self._unsupported:
            done(None, Unsupported("redis-py's connection has no stream writer"))
            return
        conn = self._conn
        writer = None if conn is None else _writer(conn)
        if conn is None or writer is None:  # not yet, or being dropped: a new connection
            self._queued.append((args, done))
            if not self._connecting:
                self._connecting = True
                self._spawn(self._connect())
            return
        self._sent.append(done)
        writer.writelines(conn.pack_command(*args))

    async def call(self, *args: Any) -> Any:
        """The reply to one command (an error reply raised as redis-py's ResponseError)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any, error: BaseException | None) -> None:
            if fut.done():  # the caller was cancelled: the reply is dropped
                return
            if error is None:
                fut.set_result(reply)
            else:
                fut.set_exception(error)

        self.submit(args, done)
        return await fut

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        conn = self._make()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException as exc:
            self._connecting = False
            queued, self._queued = self._queued, []
            error = exc if isinstance(exc, Exception) else RedisConnectionError("cancelled")
            for _, done in queued:
                done(None, error)
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect()
            if not isinstance(exc, Exception):
                raise
            return
        self._connecting = False
        if self._closed:
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect()
            return
        if _writer(conn) is None:  # would reconnect forever: fail now, the backend falls back
            self._unsupported = True
            queued, self._queued = self._queued, []
            for _, done in queued:
                done(None, Unsupported("redis-py's connection has no stream writer"))
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect()
            return
        self._conn, self._sent = conn, deque()
        self._spawn(self._read(conn, self._sent))
        queued, self._queued = self._queued, []
        for args, done in queued:
            self.submit(args, done)

    async def _read(self, conn: AbstractConnection, sent: deque[Done]) -> None:
        """Hand each reply to the oldest command's callback; on a lost connection fail them all."""
        error: BaseException = RedisConnectionError("the result backend's connection was lost")
        try:
            while True:
                try:
                    reply = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:  # an error reply: that command's, the rest go on
                    sent.popleft()(None, exc)
                    continue
                sent.popleft()(reply, None)
        except _ERRORS as exc:
            error = exc
        except IndexError:  # a reply nothing asked for: the connection is out of step
            error = RedisConnectionError("unexpected reply on the result backend's connection")
        finally:
            if self._conn is conn:
                self._conn = None
            while sent:
                sent.popleft()(None, error)
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect(nowait=True)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        queued, self._queued = self._queued, []
        for _, done in queued:
            done(None, RedisConnectionError("the Redis result backend was closed"))
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect()


def _writer(conn: AbstractConnection) -> asyncio.StreamWriter | None:
    """The connection's stream writer (redis-py 4.2-8 keep it as `_writer`; None once
    disconnected). Written with no `drain()`: the records are in memory already."""
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    return writer
