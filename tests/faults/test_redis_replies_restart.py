"""The reply channel (backends/_redis_replies.py) across a restart of a private Redis.

A push published while the backend's pub/sub connection is down is lost: the wait that
expected it must still get its result (by reading the key), and once the connection is back
the reply channel is subscribed again, so pushes reach the producer as before.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from aiotask.backends.base import EncodedResult, ResultRecord, encode_record
from aiotask.backends.redis import RedisBackend
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from aiotask.states import SUCCESS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio.connection import AbstractConnection

    from tests.servers import PrivateRedis

pytestmark = pytest.mark.redis


def _result(task_id: str, value: object, reply_to: str | None = None) -> EncodedResult:
    data = encode_record(ResultRecord(task_id, SUCCESS, value))
    return EncodedResult(task_id, SUCCESS, data, 60.0, reply_to)


@pytest.fixture
async def backend(redis_server: PrivateRedis) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_server.url, Settings(key_prefix="replies"))
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def _subscribed(backend: RedisBackend, channel: bytes) -> None:
    """Until the pub/sub connection has confirmed `channel` (again, after a reconnect)."""
    sub = backend._sub
    assert sub is not None
    async with asyncio.timeout(10):
        while not sub._confirmed[channel].done():
            await asyncio.sleep(0.02)


async def _store(backend: RedisBackend, result: EncodedResult) -> None:
    """Store, once the dedicated connection has noticed the restart (it reconnects then)."""
    async with asyncio.timeout(10):
        while True:
            try:
                await backend.store([result])
                return
            except BrokerConnectionError:  # written on the connection the restart closed
                await asyncio.sleep(0.05)


async def test_a_restart_loses_no_result_and_the_reply_channel_comes_back(
    backend: RedisBackend, redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store([_result("warm", 0)])
    assert (await backend.wait("warm", timeout=5)).result == 0  # a wait: sends name the channel
    channel = backend.expect("lost")
    assert channel is not None
    await _subscribed(backend, channel.encode())

    sub, replies = backend._sub, backend._replies
    assert sub is not None and replies is not None
    # the pub/sub connection's reconnect is held back until the result is stored, so the
    # push published meanwhile is certainly lost
    gate = asyncio.Event()
    make = sub._make

    def held_back() -> AbstractConnection:
        conn = make()
        connect = conn.connect

        async def later() -> None:
            await gate.wait()
            await connect()  # type: ignore[no-untyped-call]

        conn.connect = later  # type: ignore[method-assign]
        return conn

    monkeypatch.setattr(sub, "_make", held_back)
    redis_server.kill()  # kill -9, by PID; the append-only file keeps what was stored
    redis_server.start()
    await _store(backend, _result("lost", 1, channel))
    lost = replies._expected[backend._key("lost").encode()][0]
    await asyncio.sleep(0.2)
    assert not lost.done()  # published while nobody listened
    gate.set()
    assert (await backend.wait("lost", timeout=10)).result == 1  # read instead

    await _subscribed(backend, channel.encode())  # subscribed again after the reconnect
    assert backend.expect("pushed") == channel
    reads: list[str] = []
    fetch = backend._fetch

    def counted(key: str) -> asyncio.Future[bytes | None]:
        reads.append(key)
        return fetch(key)

    await _store(backend, _result("pushed", 2, channel))
    pushed = replies._expected[backend._key("pushed").encode()][0]
    async with asyncio.timeout(5):
        await asyncio.shield(pushed)  # the push reached this process
    monkeypatch.setattr(backend, "_fetch", counted)
    assert (await backend.wait("pushed", timeout=5)).result == 2
    assert reads == []  # answered by the push, no read
