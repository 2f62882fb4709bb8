"""The worker-registry and control-reply primitives of the backend contract, on every backend."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask._time import monotonic

if TYPE_CHECKING:
    from aiotask.backends import ResultBackend


async def test_registry_records_refresh_and_unregister(backend: ResultBackend) -> None:
    assert await backend.workers() == {}
    await backend.register_worker("w1", b'{"n": 1}', 30)
    await backend.register_worker("w2", b'{"n": 2}', 30)
    await backend.register_worker("w1", b'{"n": 3}', 30)  # a later beat replaces the record
    assert await backend.workers() == {"w1": b'{"n": 3}', "w2": b'{"n": 2}'}
    await backend.unregister_worker("w2")
    await backend.unregister_worker("never-there")
    assert await backend.workers() == {"w1": b'{"n": 3}'}


async def test_registry_entry_expires(backend: ResultBackend) -> None:
    await backend.register_worker("short", b"{}", 0.2)
    await backend.register_worker("long", b"{}", 30)
    await asyncio.sleep(0.4)
    assert set(await backend.workers()) == {"long"}


async def test_replies_gathered_in_order_and_taken_once(backend: ResultBackend) -> None:
    await backend.reply("r1", b"a", 30)
    await backend.reply("r1", b"b", 30)
    await backend.reply("other", b"x", 30)
    assert await backend.replies("r1", 1.0) == [b"a", b"b"]
    started = monotonic()
    assert await backend.replies("r1", 0.3) == []  # taken: nothing left, waits `wait`
    assert monotonic() - started >= 0.25
    assert await backend.replies("other", 0.1) == [b"x"]


async def test_replies_wakes_for_a_reply_sent_while_waiting(backend: ResultBackend) -> None:
    async def later() -> None:
        await asyncio.sleep(0.2)
        await backend.reply("r2", b"late", 30)

    task = asyncio.create_task(later())
    started = monotonic()
    assert await backend.replies("r2", 10.0) == [b"late"]
    assert monotonic() - started < 5.0  # woken by the reply, not by the 10 s wait
    await task


async def test_a_broadcast_right_after_subscribed_is_heard(backend: ResultBackend) -> None:
    """`control(subscribed)` says when it listens: a worker is ready only then, so a request
    sent the moment it is ready reaches it (a ping used to miss a just-started worker)."""
    subscribed = asyncio.Event()
    feed = backend.control(subscribed.set)
    first = asyncio.ensure_future(anext(feed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        await backend.broadcast(b'{"op": "probe"}')
        assert await asyncio.wait_for(first, 10) == b'{"op": "probe"}'
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await feed.aclose()  # type: ignore[attr-defined]
