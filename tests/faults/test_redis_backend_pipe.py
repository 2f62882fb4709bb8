"""The Redis result backend's dedicated connection (backends/_redis_pipe.py) on a private server.

Stores and waits' reads are written on one pipelined connection whose replies one reader
task hands out in order: a lost connection fails what was in flight and the next command
reconnects; a flushed script cache is reloaded; an error reply fails only its own command;
a cancelled wait cancels only its own read; the reads of one loop iteration are one MGET.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from aiotask.backends.base import EncodedResult, ResultRecord, encode_record
from aiotask.backends.redis import RedisBackend
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from aiotask.states import SUCCESS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.backends._redis_pipe import Pipe
    from tests.servers import PrivateRedis

pytestmark = pytest.mark.redis


def _result(task_id: str, value: object = None) -> EncodedResult:
    data = encode_record(ResultRecord(task_id, SUCCESS, value))
    return EncodedResult(task_id, SUCCESS, data, 60.0)


@pytest.fixture
async def backend(redis_server: PrivateRedis) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_server.url, Settings(key_prefix="pipe"))
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def admin(redis_server: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def _pipe(backend: RedisBackend) -> Pipe:
    pipe = backend._pipe
    assert pipe is not None
    return pipe


async def test_a_lost_connection_fails_the_store_in_flight_and_the_next_reconnects(
    backend: RedisBackend, admin: aioredis.Redis
) -> None:
    await backend.store([_result("a")])
    pipe_id = await _pipe(backend).call("CLIENT", "ID")
    await admin.client_pause(10_000, all=False)  # the next store waits
    try:
        store = asyncio.ensure_future(backend.store([_result("b")]))
        await asyncio.sleep(0.2)
        assert not store.done()
        await admin.client_kill_filter(_id=pipe_id)
        async with asyncio.timeout(5):  # a reply never read would hang here
            with pytest.raises(BrokerConnectionError):
                await store
    finally:
        await admin.client_unpause()
    await backend.store([_result("c", 3)])  # on a new connection
    assert await _pipe(backend).call("CLIENT", "ID") != pipe_id
    record = await backend.wait("c", 5)
    assert record.result == 3


async def test_a_flushed_script_cache_is_loaded_again(
    backend: RedisBackend, admin: aioredis.Redis
) -> None:
    await backend.store([_result("a")])
    await admin.script_flush()  # a private server: no one else's scripts
    await backend.store([_result("b", 2)])
    assert (await backend.wait("b", 5)).result == 2


async def test_an_error_reply_fails_only_its_own_command(backend: RedisBackend) -> None:
    pipe = _pipe(backend)
    await backend.store([_result("a", 1)])
    wrong = asyncio.ensure_future(pipe.call("INCR", "pipe:result:a"))  # not an integer
    read = asyncio.ensure_future(backend.wait("a", 5))
    with pytest.raises(ResponseError):
        await wrong
    assert (await read).result == 1


async def test_a_cancelled_wait_leaves_the_other_wait_on_its_key_its_result(
    backend: RedisBackend,
) -> None:
    await backend.store([_result("a", 1)])
    first = asyncio.ensure_future(backend.wait("a", 5))
    second = asyncio.ensure_future(backend.wait("a", 5))
    await asyncio.sleep(0)  # both asked for the key: one read for the two
    first.cancel()
    assert (await second).result == 1
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert first.cancelled()


async def test_the_reads_of_one_iteration_are_one_mget(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"t{i}" for i in range(50)]
    await backend.store([_result(t, i) for i, t in enumerate(ids)])
    pipe = _pipe(backend)
    commands: list[tuple[Any, ...]] = []
    submit = pipe.submit

    def spy(args: tuple[Any, ...], done: Any) -> None:
        commands.append(args)
        submit(args, done)

    monkeypatch.setattr(pipe, "submit", spy)
    records = await asyncio.gather(*(backend.wait(t, 5) for t in ids))
    assert [r.result for r in records] == list(range(50))
    assert [c[0] for c in commands] == ["MGET"]
    assert len(commands[0]) == 51


async def test_a_redis_py_without_a_stream_writer_falls_back_to_the_pool(
    redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later redis-py that renames the connection's writer must not reconnect forever:
    connect() finds out on its PING and the backend uses redis-py's client instead."""
    from aiotask.backends import _redis_pipe

    monkeypatch.setattr(_redis_pipe, "_writer", lambda conn: None)
    b = RedisBackend(redis_server.url, Settings(key_prefix="pipe-fallback"))
    await asyncio.wait_for(b.connect(), 10)
    try:
        assert b._pipe is None
        await b.store([_result("f", 7)])
        record = await asyncio.wait_for(b.wait("f", 5), 10)
        assert record.result == 7
    finally:
        await b.close()
