"""A fault-injecting TCP proxy (a small Toxiproxy): pass, black-hole, or reset connections.

It runs its own event loop in a thread, so the faults it injects do not depend on how busy the
harness' loop is. Clients connect to `proxy.port`; each connection is piped to the target.

- `blackhole()`: stop moving bytes both ways and hold new connections unanswered, as a network
  partition does (TCP keeps the bytes; nothing is lost or reordered).
- `heal()`: move bytes again; held connections reach the target.
- `reset()`: abort every open connection with a TCP RST (SO_LINGER 0), as a crashed middlebox
  or a firewall does; new connections work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine

_RST = struct.pack("ii", 1, 0)


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._open: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- control, from any thread ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def blackhole(self) -> None:
        self._call(self._set_open(False))

    def heal(self) -> None:
        self._call(self._set_open(True))

    def reset(self) -> int:
        """Abort every open connection with RST; returns how many were cut."""
        cut: int = self._call(self._reset())
        return cut

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- inside the proxy's loop --------------------------------------------------------------
    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        for task in list(self._tasks):
            task.cancel()

    async def _set_open(self, value: bool) -> None:
        assert self._open is not None
        if value:
            self._open.set()
        else:
            self._open.clear()

    async def _reset(self) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            for writer in pair:
                _abort(writer)
        return len(pairs)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._open is not None
        self.connections += 1
        await self._open.wait()  # a black hole answers nothing, not even the connect
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_w)  # server down: the client sees a reset, as it would without us
            return
        pair = (client_w, upstream_w)
        self._pairs.add(pair)
        for src, dst in ((client_r, upstream_w), (upstream_r, client_w)):
            task = asyncio.create_task(self._pump(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        assert self._open is not None
        try:
            while data := await src.read(65536):
                await self._open.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pair in self._pairs:  # one side closed: close the other side cleanly
                self._pairs.discard(pair)
                for writer in pair:
                    with contextlib.suppress(OSError, RuntimeError):
                        writer.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    writer.transport.abort()
