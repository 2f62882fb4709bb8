"""Results pushed to the producer that waits for them (backends/_redis_replies.py).

Once a process has waited for a result, its single sends name its reply channel
(`Message.reply_to`); the worker's store script publishes the record there too, so `get()` of
a result stored before it began reads nothing. A process that sends without waiting stops
naming it; expectations are bounded; a push that never comes leaves the wait as it was.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from aiotask import App
from aiotask.backends import _redis_replies
from aiotask.backends.base import EncodedResult, ResultRecord, encode_record
from aiotask.backends.redis import RedisBackend
from aiotask.exceptions import ProtocolError
from aiotask.protocol import Message, decode, encode
from aiotask.settings import Settings
from aiotask.states import STARTED, SUCCESS
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.backends._redis_replies import Replies

pytestmark = pytest.mark.redis


def _result(task_id: str, value: object = None, reply_to: str | None = None) -> EncodedResult:
    data = encode_record(ResultRecord(task_id, SUCCESS, value))
    return EncodedResult(task_id, SUCCESS, data, 60, reply_to)


def _replies(backend: RedisBackend) -> Replies:
    replies = backend._replies
    assert replies is not None
    return replies


def _key(backend: RedisBackend, task_id: str) -> bytes:
    return backend._key(task_id).encode()


def _count_reads(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    fetch = backend._fetch

    def counted(key: str) -> asyncio.Future[bytes | None]:
        reads.append(key)
        return fetch(key)

    monkeypatch.setattr(backend, "_fetch", counted)
    return reads


@pytest.fixture
async def backend(redis_url: str, namespace: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_url, Settings(key_prefix=namespace))
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def _earn_credit(backend: RedisBackend, task_id: str = "warm") -> None:
    await backend.store([_result(task_id)])
    await backend.wait(task_id, timeout=5)


async def _pushed(backend: RedisBackend, task_id: str) -> None:
    """Until the push for `task_id` is in this process."""
    fut = _replies(backend)._expected[_key(backend, task_id)][0]
    async with asyncio.timeout(5):
        await asyncio.shield(fut)


async def _listening(backend: RedisBackend) -> None:
    """Until the reply channel's subscription is confirmed."""
    sub = backend._sub
    assert sub is not None
    async with asyncio.timeout(5):
        await asyncio.shield(sub._confirmed[_replies(backend).channel])


def test_reply_to_travels_in_the_message_and_old_messages_have_none() -> None:
    sent = Message("id-1", "t", [1], root_id="id-1", reply_to="ns:reply:abc")
    assert decode(encode(sent)).reply_to == "ns:reply:abc"
    assert decode(encode(Message("id-2", "t", root_id="id-2"))).reply_to is None
    full = Message("id-3", "t", [1], {"k": 2}, queue="q", root_id="id-3", reply_to="r")
    assert decode(encode(full)) == full
    with pytest.raises(ProtocolError, match="reply_to"):
        decode(b'{"v": 1, "id": "a", "task": "t", "root_id": "a", "reply_to": 5}')


async def test_after_a_wait_a_send_names_the_channel_and_get_reads_nothing(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App("replies", broker=redis_url, backend=redis_url, key_prefix=namespace)

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    async with start_worker(app):
        first = await double.send(1)
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        assert _key(backend, first.id) not in _replies(backend)._expected  # no wait yet
        assert await first.get(timeout=10) == 2  # the first wait earns credit
        handle = await double.send(21)
        await _pushed(backend, handle.id)  # the worker's store published it to this process
        reads = _count_reads(backend, monkeypatch)
        assert await handle.get(timeout=10) == 42
        assert reads == []  # without the push: a read of the key
    await app.close()


async def test_the_store_publishes_on_the_reply_channel(
    backend: RedisBackend, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    channel = f"{backend._prefix}:reply:listener"
    await pubsub.subscribe(channel, backend._key("other"))
    try:
        await backend.store([_result("pushed", 5, reply_to=channel)])
        await backend.store([_result("plain", 6)])  # no reply channel: nothing published
        # a channel that is not a reply channel of this prefix (here: another task's result
        # channel, whose waiter would take the push for its record): nothing published there
        other = backend._key("other")
        await backend.store([_result("forged", 7, reply_to=other)])
        progress = encode_record(ResultRecord("running", STARTED))
        await backend.store([EncodedResult("running", STARTED, progress, 60, channel)])
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while len(got) < 1:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is not None:
                    got.append(msg["data"])
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
        key = backend._key("pushed").encode()
        assert got == [
            b"%d %s" % (len(key), key) + encode_record(ResultRecord("pushed", SUCCESS, 5))
        ]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_a_push_during_the_wait_answers_it(backend: RedisBackend) -> None:
    await _earn_credit(backend)
    channel = backend.expect("later")
    assert channel is not None
    waiter = asyncio.ensure_future(backend.wait("later", timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await backend.store([_result("later", 8, reply_to=channel)])
    assert (await waiter).result == 8


async def test_a_result_stored_without_its_push_is_still_seen(backend: RedisBackend) -> None:
    await _earn_credit(backend)
    assert backend.expect("old-worker") is not None
    await backend.store([_result("old-worker", 9)])  # a worker that does not push
    assert (await backend.wait("old-worker", timeout=5)).result == 9


async def test_garbage_on_the_reply_channel_is_ignored(
    backend: RedisBackend, redis_url: str
) -> None:
    await _earn_credit(backend)
    channel = backend.expect("g")
    assert channel is not None
    await _listening(backend)  # so the garbage does reach this process
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.publish(channel, b"not a push")
        await client.publish(channel, b"999 short")
    finally:
        await client.aclose()
    await backend.store([_result("g", 1, reply_to=channel)])
    assert (await backend.wait("g", timeout=5)).result == 1


async def test_no_channel_without_a_wait_first(backend: RedisBackend) -> None:
    assert backend.expect("cold") is None
    assert _replies(backend)._expected == {}


async def test_sends_without_waits_stop_naming_the_channel(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_replies, "EXPECT_TTL", 0.0)  # every expectation expires at once
    await _earn_credit(backend)
    named = [backend.expect(f"fire-{i}") for i in range(50)]
    assert named[0] is not None
    assert named[1:] == [None] * 49  # the first, dropped unused, spent the credit


async def test_expectations_are_bounded(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_replies, "EXPECT_MAX", 4)
    for i in range(4):
        await _earn_credit(backend, f"warm-{i}")
    for i in range(10):
        backend.expect(f"many-{i}")
        assert len(_replies(backend)._expected) <= 4
    # the oldest went first; each dropped unused cost one of the 4 waits' credit, so the
    # fourth drop (making room for many-7) left none: many-7 and later were not expected
    assert list(_replies(backend)._expected) == [_key(backend, f"many-{i}") for i in range(4, 7)]


async def test_close_cancels_what_was_expected(backend: RedisBackend) -> None:
    await _earn_credit(backend)
    backend.expect("pending")
    fut = _replies(backend)._expected[_key(backend, "pending")][0]
    await backend.close()
    assert fut.cancelled()


async def test_an_ignore_result_send_names_no_channel(redis_url: str, namespace: str) -> None:
    app = App("replies", broker=redis_url, backend=redis_url, key_prefix=namespace)

    @app.task(ignore_result=True)
    async def fire() -> None:
        return None

    @app.task
    async def ident(x: Any) -> Any:
        return x

    async with start_worker(app):
        assert await (await ident.send(1)).get(timeout=10) == 1
        backend = await app.result_backend()
        assert isinstance(backend, RedisBackend)
        await fire.send()
        assert _replies(backend)._expected == {}
        handle = await ident.send(2)
        assert _key(backend, handle.id) in _replies(backend)._expected
        assert await handle.get(timeout=10) == 2
    await app.close()
