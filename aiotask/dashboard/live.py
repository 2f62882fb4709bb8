"""Server-sent events: each task change the history sees, pushed to the live pages.

One `data:` line of JSON per change (`{"kind": "task", "id", "task", "state", ...}` or
`{"kind": "worker", "type", "worker"}`), and a comment line every KEEPALIVE seconds so
proxies keep the connection open. A page that falls behind by SUBSCRIBER_BUFFER changes
misses some; the pages reload their figures on the next one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from starlette.responses import StreamingResponse

from aiotask.dashboard.core import dashboard_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

#: Seconds between two keep-alive comments on an idle stream.
KEEPALIVE = 15.0


async def event_stream(request: Request) -> StreamingResponse:
    dash = dashboard_of(request)
    dash.ensure_following()

    async def changes() -> AsyncIterator[bytes]:
        with dash.history.subscribe() as queue:
            yield b": connected\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        change = await queue.get()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                yield b"data: " + orjson.dumps(change, default=str) + b"\n\n"

    return StreamingResponse(
        changes(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
