"""Redis-specific behaviour of the Streams broker and the Redis backend (real servers only).

Tests that kill or restart Redis run their own redis-server on a free port in a temp dir,
started and stopped by PID; the shared server on 6379 only sees keys under the test prefix.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import TYPE_CHECKING, cast

import pytest
from redis.asyncio import Redis

from aiotask.backends.redis import RedisBackend
from aiotask.brokers import Delivery, Outgoing
from aiotask.brokers._common import exhausted_reason
from aiotask.brokers.redis_streams import RedisStreamsBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from tests.conftest import REQUIRE_SERVICES
from tests.contract.conftest import delete_prefix
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = pytest.mark.redis


def settings(url: str, namespace: str, **kw: object) -> Settings:
    return Settings(broker_url=url, key_prefix=namespace, **kw)  # type: ignore[arg-type]


def out(i: int, queue: str = "q", **kw: object) -> Outgoing:
    return Outgoing(queue=queue, body=f"body-{i}".encode(), message_id=f"m{i}", **kw)  # type: ignore[arg-type]


async def receive_n(broker: RedisStreamsBroker, n: int, timeout: float = 5.0) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got += await broker.receive(["q"], n - len(got))
    return got


@pytest.fixture
async def raw(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
        await delete_prefix(redis_url, namespace)


@pytest.fixture
async def broker(redis_url: str, namespace: str, raw: Redis) -> AsyncIterator[RedisStreamsBroker]:
    b = RedisStreamsBroker(redis_url, settings(redis_url, namespace, visibility_timeout=0.6), "app")
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def test_ack_deletes_entries_so_streams_do_not_grow(
    broker: RedisStreamsBroker, raw: Redis, namespace: str
) -> None:
    await broker.publish([out(i) for i in range(20)])
    stream = f"{namespace}:{{q}}:s0"
    assert await raw.xlen(stream) == 20
    got = await receive_n(broker, 20)
    await broker.ack(got)
    assert await raw.xlen(stream) == 0
    assert (await raw.xpending(stream, "app"))["pending"] == 0


async def test_dead_consumers_messages_are_taken_over_by_a_live_one(
    redis_url: str, namespace: str, raw: Redis, broker: RedisStreamsBroker
) -> None:
    await broker.publish([out(i) for i in range(6)])
    stream = f"{namespace}:{{q}}:s0"
    await raw.xgroup_create(stream, "app", id="0")
    # a consumer that reads three messages and dies without a word
    await raw.xreadgroup("app", "dead-worker", {stream: ">"}, count=3)
    conf = settings(redis_url, namespace, visibility_timeout=0.6)
    other = RedisStreamsBroker(redis_url, conf, "app")
    await other.connect()
    try:
        fresh = await broker.receive(["q"], 10)
        assert {d.message_id for d in fresh} == {"m3", "m4", "m5"}
        assert all(d.deliveries == 1 for d in fresh)
        await broker.ack(fresh)
        started = time.monotonic()
        async with asyncio.timeout(5):
            taken = await other.receive(["q"], 10)  # once the dead one's 0.6 s lease lapsed
        assert time.monotonic() - started > 0.3
        assert {d.message_id for d in taken} == {"m0", "m1", "m2"}
        assert all(d.deliveries == 2 for d in taken)
        await other.ack(taken)
    finally:
        await other.close()
    assert await raw.xlen(stream) == 0
    pending = await raw.xpending(stream, "app")
    assert pending["pending"] == 0


async def test_garbage_entry_is_delivered_as_bytes_and_can_be_dead_lettered(
    broker: RedisStreamsBroker, raw: Redis, namespace: str
) -> None:
    stream = f"{namespace}:{{q}}:s0"
    await raw.xadd(stream, {b"junk": b"\xff\x00not a message"})
    [d] = await receive_n(broker, 1)
    assert d.body == b"\xff\x00not a message"
    await broker.nack([d], requeue=False, reason="undecodable: garbage")
    [dead] = await broker.dead_letters("q")
    assert dead.body == b"\xff\x00not a message" and "garbage" in dead.reason
    assert await raw.xlen(stream) == 0


async def test_close_hands_back_unsettled_messages_at_once(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    conf = settings(redis_url, namespace, visibility_timeout=30.0)
    a = RedisStreamsBroker(redis_url, conf, "app")
    b = RedisStreamsBroker(redis_url, conf, "app")
    await a.connect()
    await b.connect()
    try:
        await a.publish([out(1), out(2)])
        assert len(await receive_n(a, 2)) == 2
        await a.close()  # a cold shutdown: nothing settled
        again = await receive_n(b, 2, timeout=2.0)  # long before the 30 s lease
        assert {d.message_id for d in again} == {"m1", "m2"}
        await b.ack(again)
    finally:
        await b.close()


async def test_new_delayed_message_wakes_a_blocked_consumer(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    conf = settings(redis_url, namespace, visibility_timeout=60.0)  # reclaim every 30 s
    consumer = RedisStreamsBroker(redis_url, conf, "app")
    producer = RedisStreamsBroker(redis_url, conf, "app")
    await consumer.connect()
    await producer.connect()
    try:
        waiter = asyncio.create_task(consumer.receive(["q"], 5))
        await asyncio.sleep(0.3)  # consumer is now blocked with no known eta
        assert await raw.zcard(f"{namespace}:{{q}}:delayed") == 0
        started = time.monotonic()
        await producer.publish([out(1, eta=time.time() + 0.5)])
        assert await raw.zcard(f"{namespace}:{{q}}:delayed") == 1
        async with asyncio.timeout(5):
            [d] = await waiter
        assert d.message_id == "m1"
        assert 0.4 < time.monotonic() - started < 2.0
        await consumer.ack([d])
    finally:
        await consumer.close()
        await producer.close()


async def _own_connections(raw: Redis, name: str) -> int:
    """Connections of one client (by its CLIENT SETNAME), not the shared server's total."""
    return sum(1 for c in await raw.client_list() if c.get("name") == name)


async def _all_closed(raw: Redis, name: str) -> bool:
    """The server notices closed connections a moment later: look for up to 2 s."""
    deadline = time.monotonic() + 2.0
    while await _own_connections(raw, name) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return await _own_connections(raw, name) == 0


async def test_many_waits_share_one_connection(redis_url: str, namespace: str, raw: Redis) -> None:
    from aiotask.backends.base import EncodedResult, ResultRecord

    backend = RedisBackend(redis_url, settings(redis_url, namespace))
    await backend.connect()
    name = backend.shared_client.name
    try:
        ids = [f"{namespace}-{i}" for i in range(1000)]
        waits = [asyncio.create_task(backend.wait(t, timeout=10)) for t in ids]
        await asyncio.sleep(0.3)
        # one pub/sub connection plus at most a couple of pooled ones, whatever the count
        assert 1 <= await _own_connections(raw, name) <= 3
        await backend.store(
            [EncodedResult.of(ResultRecord(t, "SUCCESS", i), 60) for i, t in enumerate(ids)]
        )
        results = await asyncio.gather(*waits)
        assert [r.result for r in results] == list(range(1000))
    finally:
        await backend.close()
    assert await _all_closed(raw, name)


async def test_broker_and_backend_on_one_server_share_one_pool(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    from aiotask import App

    app = App("share", broker=redis_url, key_prefix=namespace)
    backend, broker = app.backend, app.broker
    assert isinstance(backend, RedisBackend)
    assert isinstance(broker, RedisStreamsBroker)
    assert backend.shared_client is broker.shared_client
    name = broker.shared_client.name
    async with app:
        assert backend._redis is broker._redis
        await broker.publish([out(1)])
        assert await backend.get("nothing") is None
        assert await _own_connections(raw, name) >= 1
    assert await _all_closed(raw, name)
    other = App("apart", broker=redis_url, backend=redis_url.rsplit("/", 1)[0] + "/1")
    backend, broker = other.backend, other.broker
    assert isinstance(backend, RedisBackend)
    assert isinstance(broker, RedisStreamsBroker)
    assert backend.shared_client is not broker.shared_client  # another database: another pool


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path, "--maxmemory-policy", "allkeys-lru")
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_warns_about_persistence_and_eviction(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    b = RedisStreamsBroker(private_redis.url, settings(private_redis.url, "w"), "app")
    with caplog.at_level(logging.WARNING, logger="aiotask._redis.client"):
        await b.connect()
        assert caplog.text == ""  # a producer connecting: no warning (only a worker's start)
        await b.heartbeat()  # what a worker does first
    await b.close()
    text = caplog.text
    assert "appendonly yes" in text and "maxmemory-policy noeviction" in text


async def test_receive_resumes_after_a_restart_without_persistence(
    private_redis: PrivateRedis,
) -> None:
    b = RedisStreamsBroker(private_redis.url, settings(private_redis.url, "r"), "app")
    await b.connect()
    try:
        await b.publish([out(1)])
        await b.ack(await receive_n(b, 1))
        waiter = asyncio.create_task(b.receive(["q"], 1))
        await asyncio.sleep(0.2)
        private_redis.kill()
        await asyncio.sleep(0.3)
        private_redis.start()  # empty: the stream and the group are gone
        await b.publish([out(2)])
        async with asyncio.timeout(10):
            [d] = await waiter
        assert d.message_id == "m2"
        await b.ack([d])
    finally:
        await b.close()


async def test_receive_gives_up_after_broker_unreachable_timeout(
    private_redis: PrivateRedis,
) -> None:
    conf = settings(private_redis.url, "u", broker_unreachable_timeout=1.0)
    b = RedisStreamsBroker(private_redis.url, conf, "app")
    await b.connect()
    try:
        private_redis.kill()
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError, match="unreachable"):
            await b.receive(["q"], 1)
        assert 0.9 < time.monotonic() - started < 5
    finally:
        await b.close()


async def test_wait_survives_a_backend_restart(private_redis: PrivateRedis) -> None:
    from aiotask.backends.base import EncodedResult, ResultRecord

    backend = RedisBackend(private_redis.url, settings(private_redis.url, "b"))
    await backend.connect()
    try:
        waiter = asyncio.create_task(backend.wait("t1", timeout=10))
        await asyncio.sleep(0.2)
        private_redis.kill()
        await asyncio.sleep(0.2)
        private_redis.start()
        # stored maybe before the reader is back: it re-reads the key after subscribing again
        await backend.store([EncodedResult.of(ResultRecord("t1", "SUCCESS", 7), 60)])
        assert (await waiter).result == 7
    finally:
        await backend.close()


async def _owner(raw: Redis, stream: str, entry_id: bytes) -> str:
    [pending] = await raw.xpending_range(stream, "app", min=entry_id, max=entry_id, count=1)
    consumer = pending["consumer"]
    return consumer.decode() if isinstance(consumer, bytes) else str(consumer)


async def test_lease_renewal_never_takes_back_a_message_taken_over_after_a_lapse(
    redis_url: str, namespace: str, raw: Redis, broker: RedisStreamsBroker
) -> None:
    other = RedisStreamsBroker(
        redis_url, settings(redis_url, namespace, visibility_timeout=0.6), "app"
    )
    await other.connect()
    try:
        await broker.publish([out(1)])
        [mine] = await receive_n(broker, 1)
        await asyncio.sleep(0.8)  # our lease lapses (a long GC pause, a stalled loop)
        async with asyncio.timeout(5):
            [theirs] = await other.receive(["q"], 1)  # taken over, legitimately
        assert theirs.message_id == mine.message_id and theirs.deliveries == 2
        stream, entry_id = cast("tuple[str, bytes]", theirs.token)
        assert await _owner(raw, stream, entry_id) == other._consumer
        await broker.extend([mine])  # the old owner's renewal timer fires
        assert await _owner(raw, stream, entry_id) == other._consumer
        await other.extend([theirs])  # the new owner's renewal still works
        assert await _owner(raw, stream, entry_id) == other._consumer
        await broker.nack([mine], requeue=True)  # a late hand-back must not duplicate it
        assert await raw.xlen(stream) == 1
        await other.ack([theirs])
        assert await raw.xlen(stream) == 0
    finally:
        await other.close()


async def test_counted_hand_back_carries_the_count_and_dead_letters_with_the_common_reason(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    conf = settings(redis_url, namespace, visibility_timeout=30.0, max_deliveries=2)
    b = RedisStreamsBroker(redis_url, conf, "app")
    await b.connect()
    try:
        await b.publish([out(1)])
        [d] = await receive_n(b, 1)
        await b.nack([d], requeue=True, counted=True)
        [d] = await receive_n(b, 1)
        assert d.deliveries == 2
        await b.nack([d], requeue=True, counted=True)
        [dead] = await b.dead_letters("q")
        assert dead.reason == exhausted_reason(2, 2)
        assert await raw.xlen(f"{namespace}:{{q}}:s0") == 0
    finally:
        await b.close()


async def test_a_lost_consumers_entries_are_taken_over_but_a_silent_one_keeps_its_lease(
    redis_url: str, namespace: str, raw: Redis
) -> None:
    conf = settings(
        redis_url,
        namespace,
        visibility_timeout=60.0,
        worker_heartbeat_interval=0.1,
        worker_lost_after=0.5,
    )
    lost, silent, taker = (RedisStreamsBroker(redis_url, conf, "app") for _ in range(3))
    for b in (lost, silent, taker):
        await b.connect()
    try:
        await lost.heartbeat()
        await lost.publish([out(1), out(2)])
        held = await receive_n(lost, 1)
        assert await raw.zscore(f"{namespace}:{{q}}:consumers", lost._consumer) is not None
        [kept] = await receive_n(silent, 1)  # never sends a heartbeat: the lease rule only
        await asyncio.sleep(0.6)
        await taker.heartbeat()
        async with asyncio.timeout(5):
            taken = await taker.receive(["q"], 10)
        assert [d.message_id for d in taken] == [held[0].message_id]
        assert taken[0].deliveries == 2
        # the lost consumer is forgotten once it owns nothing; the silent one keeps its entry
        assert await raw.zscore(f"{namespace}:{{q}}:consumers", lost._consumer) is None
        stream, entry_id = cast("tuple[str, bytes]", kept.token)
        assert await _owner(raw, stream, entry_id) == silent._consumer
        await taker.ack(taken)
        await silent.ack([kept])
    finally:
        for b in (lost, silent, taker):
            await b.close()
    assert await raw.exists(f"{namespace}:{{q}}:consumers") == 0


async def test_publish_markers_do_not_pile_up(
    broker: RedisStreamsBroker, raw: Redis, namespace: str
) -> None:
    for i in range(5):
        await broker.publish([out(i)])
    markers = [k async for k in raw.scan_iter(match=f"{namespace}:{{q}}:pub:*")]
    assert len(markers) == 1  # each publish deletes the markers of confirmed earlier ones
    assert 0 < await raw.pttl(markers[0]) <= broker._marker_ms


async def test_a_server_error_is_not_called_an_outage(
    broker: RedisStreamsBroker, raw: Redis, namespace: str
) -> None:
    await raw.set(f"{namespace}:{{q}}:dead", b"not a stream")
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="answered with an error") as caught:
        await broker.dead_letters("q")
    assert "WRONGTYPE" in str(caught.value) and "server running" not in str(caught.value)
    assert time.monotonic() - started < 2.0  # not retried as if unreachable


def test_lua_dead_letter_reason_is_worded_like_every_other_broker() -> None:
    from aiotask.brokers.redis_streams import _reason_parts

    head, tail = _reason_parts(5)
    assert f"{head}7{tail}" == exhausted_reason(7, 5)


async def test_keyed_streams_and_wakeups_do_not_pile_up(
    broker: RedisStreamsBroker, raw: Redis, namespace: str
) -> None:
    """Fairness: keyed sends with no worker add one wake-up entry in all, not one each; a
    drained key's stream is deleted by the lease reclaim, and the ring with the last key."""
    for i in range(30):
        await broker.publish([out(i, fair_key="ab"[i % 2])])
    base = f"{namespace}:{{q}}"
    assert await raw.xlen(f"{base}:s0") == 1
    got = await receive_n(broker, 30)
    assert {d.token[0] for d in got} == {f"{base}:f:a:s0", f"{base}:f:b:s0"}  # type: ignore[index]
    assert [d.message_id for d in got[:4]] == ["m0", "m1", "m2", "m3"]  # a, b in turn
    await broker.ack(got)
    await asyncio.sleep(0.4)  # past visibility_timeout / 2: the next receive reclaims
    with pytest.raises(TimeoutError):
        await receive_n(broker, 1, timeout=0.5)
    assert not await raw.exists(f"{base}:fring", f"{base}:fset")
    assert not await raw.exists(f"{base}:f:a:s0", f"{base}:f:b:s0")
    assert await raw.scard(f"{base}:fkeys") == 0
