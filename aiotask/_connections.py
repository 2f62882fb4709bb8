"""A connection set: one broker and result backend, opened on one event loop and used only there.

The App keeps one set per event loop (app.py `_conns`); a set closes itself when its loop shuts
down (asyncio.run, pytest-asyncio) or on `await app.close()` from that loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from aiotask.backends.base import ResultBackend
    from aiotask.brokers.base import Broker


#: Seconds a connection set may take to close when its event loop shuts down.
CLOSE_TIMEOUT = 10.0


class Connections:
    """One broker and backend, opened on one event loop and used only from it."""

    __slots__ = ("_closer", "backend", "broker", "connected", "lock", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        broker: Broker,
        backend: ResultBackend | None,
    ) -> None:
        self.loop = loop
        self.broker = broker
        self.backend = backend
        self.lock: asyncio.Lock | None = None
        self.connected = False
        self._closer: AsyncGenerator[None, None] | None = None

    async def close_with_loop(self) -> None:
        """Close this set when its loop shuts down: asyncio.run (and pytest-asyncio) close
        every suspended async generator then, while the loop still runs its transports."""
        closer = close_at_shutdown(self)
        await anext(closer)
        self._closer = closer

    async def close(self) -> None:
        if not self.connected:
            return
        self.connected = False
        closer, self._closer = self._closer, None
        try:
            try:
                await self.broker.close()
            finally:
                if self.backend is not None:
                    await self.backend.close()
        finally:
            if closer is not None:
                await closer.aclose()


async def close_at_shutdown(conns: Connections) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        conns._closer = None  # this generator is finishing: close() must not aclose() it
        if conns.connected:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await conns.close()


def is_memory(url: str) -> bool:
    return url.lower().startswith("memory:")
