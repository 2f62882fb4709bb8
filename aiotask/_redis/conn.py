"""redis-py connections that pack commands with hiredis' C packer.

redis-py's asyncio connection packs RESP in Python, which is the largest single cost of a
pipelined batch publish. hiredis (installed with `redis[hiredis]`) ships a C `pack_command`;
this connection class uses it and leaves everything else (pooling, parsing, retries) to
redis-py. Arguments hiredis cannot pack fall back to redis-py's own packer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.sentinel import SentinelManagedConnection

from aiotask._tls import context_for

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiotask._tls import TLSOptions

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency, but stay correct without it
    _hiredis_pack = None


def _pack(conn: Connection, args: tuple[Any, ...]) -> list[bytes]:
    if _hiredis_pack is not None:
        if isinstance(args[0], str) and " " in args[0]:  # "CONFIG GET" -> two arguments
            args = (*args[0].split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except TypeError:  # e.g. a memoryview: let redis-py encode it
            pass
    return Connection.pack_command(conn, *args)


class _ClosesItsSocket(AbstractConnection):
    """A disconnect that leaves no socket open behind it.

    redis-py's `disconnect(nowait=True)`, which it calls itself on a read or write error,
    closes the stream and forgets it. A TLS stream then stays half closed, its socket open,
    until the server answers the close_notify; a graceful `disconnect()` that times out
    leaves the same. If the event loop ends first (a worker stopping, a test), that socket is
    never closed ("ResourceWarning: unclosed transport"). Here the transport is aborted
    whenever the close was not waited for to its end: its socket closes on the loop's next
    turn. (A broken connection has no goodbye worth waiting for.)
    """

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:  # redis-py's, any version
        nowait = bool(args[0] if args else kwargs.get("nowait", False))
        writer = self._writer
        closed = False
        try:
            await super().disconnect(*args, **kwargs)
            closed = not nowait
        finally:
            if writer is not None and not closed:
                writer.transport.abort()


class FastPackConnection(_ClosesItsSocket, Connection):
    """redis:// connection with C command packing."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(self, args)


class FastPackSSLConnection(_ClosesItsSocket, SSLConnection):
    """rediss:// connection with C command packing and aiotask's SSLContext (aiotask._tls).

    Each new connection asks for the context again: once a CA or client certificate file is
    replaced, the next connection uses a context built from the new files, without a restart.
    """

    def __init__(self, *, tls: TLSOptions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls = tls

    def _connection_arguments(self) -> Mapping[str, Any]:
        if self.tls is None:  # not built by make_client: redis-py's own ssl_* handling
            return super()._connection_arguments()
        return {**Connection._connection_arguments(self), "ssl": context_for(self.tls)}

    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(self, args)


class FastPackSentinelConnection(_ClosesItsSocket, SentinelManagedConnection):
    """redis+sentinel:// connection: asks the sentinels for the primary, C command packing."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(self, args)


class FastPackSentinelSSLConnection(SentinelManagedConnection, FastPackSSLConnection):
    """rediss+sentinel:// connection: asks the sentinels for the primary, then TLS with
    aiotask's SSLContext (the same options as for the sentinels), C command packing."""


def driver_kwargs() -> dict[str, Any]:
    """The `driver_info` redis-py would build itself (CLIENT SETINFO lib-name/lib-ver), with
    the version from `redis.__version__`: redis-py's own default looks it up through
    `importlib.metadata`, which an idle worker otherwise never needs (about 3 MiB of RSS;
    docs/benchmarks.md). Empty before redis-py 7, which looks the version up at import."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # pragma: no cover - redis-py < 7
        return {}
    import redis

    return {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}


def connection_class(url: str) -> type[Connection]:
    """The fast connection class matching the URL's scheme."""
    return FastPackSSLConnection if url.lower().startswith("rediss:") else FastPackConnection
