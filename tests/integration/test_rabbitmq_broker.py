"""RabbitMQ-specific behaviour beyond the broker contract, plus faults on a private node.

The shared server (5672) is only used with per-test queue prefixes; anything that closes
connections or restarts the server runs against a private node started here (see
../shared/private-servers.md): its own node name, ports and temp dirs, stopped by PID.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aio_pika
import pytest
from aio_pika.exceptions import DeliveryError, PublishError

from aiotask.brokers import Delivery, Outgoing
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers._rabbitmq_publish import Publisher, message
from aiotask.brokers._rabbitmq_reader import HOOK_DELIVER, DirectDeliveries, Transport
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.exceptions import BrokerConnectionError, ConfigurationError
from aiotask.settings import Settings
from tests.rabbit_server import FaultProxy, PrivateRabbit, need_rabbitmq_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.amqp


def out(i: int, queue: str = "q", **kw: object) -> Outgoing:
    return Outgoing(queue=queue, body=f"body-{i}".encode(), message_id=f"m{i}", **kw)  # type: ignore[arg-type]


async def receive_n(broker: RabbitMQBroker, want: int, timeout: float = 5.0) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < want:
            got += await broker.receive(["q"], want - len(got))
    return got


async def nothing_within(broker: RabbitMQBroker, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await broker.receive(["q"], 10)
    except TimeoutError:
        return True
    return False


def make(url: str, namespace: str, **settings: object) -> RabbitMQBroker:
    conf = Settings(broker_url=url, key_prefix=namespace, max_deliveries=3, **settings)  # type: ignore[arg-type]
    return RabbitMQBroker(url, conf, f"app-{namespace}")


@pytest.fixture
async def brokers(amqp_url: str, namespace: str) -> AsyncIterator[list[RabbitMQBroker]]:
    """Instances on the shared server; the first one deletes the test's queues afterwards."""
    made: list[RabbitMQBroker] = []
    try:
        yield made
    finally:
        for b in made[1:]:
            await b.close()
        if made:
            await made[0].delete_queue("q")
            await made[0].close()


@pytest.fixture
async def broker(amqp_url: str, namespace: str, brokers: list[RabbitMQBroker]) -> RabbitMQBroker:
    b = make(amqp_url, namespace)
    await b.connect()
    brokers.append(b)
    return b


@pytest.fixture
async def raw(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel, to look at or tamper with what the broker wrote."""
    conn = await aio_pika.connect(amqp_url)
    try:
        yield await conn.channel()
    finally:
        await conn.close()


# -- pure topology rules ------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.001, 0.3, 1.0, 5.0, 61.7, 3600.0, 86400.0 * 3])
def test_delay_buckets_are_never_early_and_at_most_3_percent_late(seconds: float) -> None:
    ms = topo.delay_bucket_ms(seconds)
    assert ms >= seconds * 1000
    assert ms <= max(seconds * 1000 * 1.032, seconds * 1000 + 16)


def test_delay_buckets_are_few_and_capped() -> None:
    buckets = {topo.delay_bucket_ms(s / 10) for s in range(10, 600)}  # 1.0 s .. 60 s
    assert len(buckets) < 200
    assert topo.delay_bucket_ms(10**9) == topo.MAX_DELAY_MS
    assert topo.delay_bucket_ms(0) == 0
    assert topo.delay_bucket_ms(-5) == 0


def test_delivery_counting_rules() -> None:
    assert topo.prior_deliveries(None, False) == (0, False)
    assert topo.prior_deliveries({topo.HEADER_DELIVERIES: 2}, False) == (2, False)
    assert topo.prior_deliveries({topo.HEADER_DELIVERIES: 2}, True) == (3, True)
    # quorum queues count returns themselves: nothing to persist
    assert topo.prior_deliveries({topo.HEADER_QUORUM_COUNT: 2}, True) == (2, False)
    assert topo.dead_reason({"x-first-death-reason": "expired"}).endswith("expired")


class _Returned(PublishError):
    """What aio-pika raises for a basic.return, without a frame to build it from."""

    def __init__(self) -> None:
        Exception.__init__(self)

    def __str__(self) -> str:
        return "NO_ROUTE"


class _Nacked(DeliveryError):
    def __init__(self) -> None:
        Exception.__init__(self)

    def __str__(self) -> str:
        return "basic.nack"


def test_a_partial_publish_error_says_what_happened_to_which_messages() -> None:
    url = "amqp://guest:s3cret@127.0.0.1:1/"
    pub = Publisher(url, Settings(broker_url=url), "app")
    items = [("q", message(b"x", f"m{i}", 0, {})) for i in range(9)]
    lost = ConnectionResetError("reset by amqp://guest:s3cret@127.0.0.1:1/")
    results: list[BaseException | None] = [None, None, lost, lost]
    results += [_Returned(), _Nacked()]
    results += [BrokerConnectionError("unreachable"), lost, lost]
    assert pub.failure(items[:2], results[:2]) is None
    error = pub.failure(items, results)
    assert error is not None
    text = str(error)
    assert text.startswith("2 of 9 messages were published")
    assert "4 (m2, m3, m7, m8) may or may not have been stored" in text
    assert "not sent again" in text
    assert "1 (m4) were returned as unroutable" in text
    assert "1 (m5) were refused" in text
    assert "1 (m6) were not published" in text
    assert "s3cret" not in text


# -- shared server, private prefixes ------------------------------------------------------


async def test_unroutable_publish_raises(
    broker: RabbitMQBroker, raw: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await broker.publish([out(1)])  # declares the queue, waits for the confirm
    await raw.queue_delete(f"{namespace}.q")  # gone behind the broker's back
    with pytest.raises(BrokerConnectionError, match="unroutable"):
        await broker.publish([out(2)])
    await broker.publish([out(3)])  # declared again
    [d] = await receive_n(broker, 1)
    assert d.message_id == "m3"
    await broker.ack([d])


async def test_batch_publish_is_confirmed_and_persistent(
    broker: RabbitMQBroker, raw: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await broker.publish([out(i, priority=i % 10) for i in range(200)])
    queue = await raw.declare_queue(f"{namespace}.q", passive=True)
    assert queue.declaration_result.message_count == 200
    msg = await queue.get(no_ack=False)
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert msg.priority == 9  # highest first
    await msg.reject(requeue=True)


async def test_dead_letter_keeps_body_and_carries_the_reason_header(
    broker: RabbitMQBroker, raw: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await broker.publish([out(1)])
    got = await receive_n(broker, 1)
    await broker.nack(got, requeue=False, reason="undecodable: garbage")
    first = await broker.dead_letters("q")
    assert await broker.dead_letters("q") == first  # reading does not consume
    assert [(d.message_id, d.body, d.reason) for d in first] == [
        ("m1", b"body-1", "undecodable: garbage")
    ]
    dead = await raw.declare_queue(f"{namespace}.q.dead", passive=True)
    msg = await dead.get(no_ack=True)
    assert msg.headers[topo.HEADER_REASON] == "undecodable: garbage"
    assert msg.message_id == "m1"
    await raw.queue_delete(f"{namespace}.q.dead")


async def test_frames_are_read_buffered_and_deliveries_handed_over_in_the_reader(
    broker: RabbitMQBroker,
) -> None:
    # a body over frame_max (128 KiB) arrives as several body frames, among small messages
    big = Outgoing(queue="q", body=bytes(range(256)) * 1200, message_id="big")
    await broker.publish([out(1), big, *(out(i) for i in range(2, 60))])
    got = await receive_n(broker, 60)
    assert sorted((d.message_id, d.body) for d in got) == sorted(
        [("big", big.body)] + [(f"m{i}", f"body-{i}".encode()) for i in range(1, 60)]
    )
    await broker.ack(got)
    conn = broker._con.conn
    assert conn is not None and conn.transport is not None
    assert isinstance(conn.transport.connection._transport_factory, Transport)  # type: ignore[attr-defined]
    raw_channel, _ = broker._con.consumers["q"]
    assert isinstance(
        getattr(getattr(raw_channel, HOOK_DELIVER), "__self__", None), DirectDeliveries
    )


async def test_garbage_bytes_on_the_queue_are_delivered_as_bytes(
    broker: RabbitMQBroker, raw: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await broker.publish([out(1)])
    [d] = await receive_n(broker, 1)
    await broker.ack([d])
    garbage = b"\x00\xff\xfe not json \x80"
    await raw.default_exchange.publish(aio_pika.Message(garbage), routing_key=f"{namespace}.q")
    [g] = await receive_n(broker, 1)
    assert (g.body, g.deliveries) == (garbage, 1)  # bytes untouched; decoding is the worker's
    await broker.nack([g], requeue=False, reason="undecodable")
    assert [d.body for d in await broker.dead_letters("q")] == [garbage]


async def test_short_delay_does_not_wait_behind_a_long_one(broker: RabbitMQBroker) -> None:
    now = time.time()
    await broker.publish([out(1, eta=now + 30), out(2, eta=now + 0.3)])
    started = time.monotonic()
    [d] = await receive_n(broker, 1, timeout=3)
    assert d.message_id == "m2"
    assert 0.2 < time.monotonic() - started < 2.0
    await broker.ack([d])
    assert await broker.purge("q") == 1  # the 30 s one, still in its delay queue


async def test_warm_close_hands_back_prefetched_messages_without_counting(
    amqp_url: str, namespace: str, broker: RabbitMQBroker, brokers: list[RabbitMQBroker]
) -> None:
    await broker.publish([out(i) for i in range(5)])
    first = make(amqp_url, namespace)
    brokers.append(first)
    [held] = await receive_n(first, 1)  # the other four sit in first's prefetch buffer
    await asyncio.sleep(0.2)
    await first.close()
    second = make(amqp_url, namespace)
    brokers.append(second)
    got = await receive_n(second, 5)
    counts = {d.message_id: d.deliveries for d in got}
    assert counts.pop(held.message_id) == 2  # it was handed out and never settled
    assert set(counts.values()) == {1}  # the prefetched ones were never charged
    await second.ack(got)


async def test_nack_requeue_on_a_delivery_from_a_closed_broker_is_ignored(
    amqp_url: str, namespace: str, broker: RabbitMQBroker, brokers: list[RabbitMQBroker]
) -> None:
    await broker.publish([out(1)])
    first = make(amqp_url, namespace)
    brokers.append(first)
    [d] = await receive_n(first, 1)
    await first.close()
    await broker.nack([d], requeue=True)  # stale: dropped, no duplicate copy
    await broker.ack([d])
    [again] = await receive_n(broker, 1)
    assert again.deliveries == 2
    await broker.ack([again])
    assert await nothing_within(broker, 0.5)


async def test_a_dead_letter_that_cannot_be_published_does_not_break_receive(
    broker: RabbitMQBroker, raw: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await broker.publish([out(1)])
    [d] = await receive_n(broker, 1)
    await broker.ack([d])
    await raw.queue_delete(f"{namespace}.q.dead")  # gone behind the broker's back
    exhausted = aio_pika.Message(b"body-2", message_id="m2", headers={topo.HEADER_DELIVERIES: 3})
    await raw.default_exchange.publish(exhausted, routing_key=f"{namespace}.q")
    assert await nothing_within(broker, 1.0)  # no error out of receive(), nothing handed out
    [dead] = await broker.dead_letters("q")  # rejected into a re-declared .dead instead
    assert (dead.message_id, dead.body) == ("m2", b"body-2")
    assert "rejected" in dead.reason


async def test_quorum_queues_count_with_x_delivery_count(
    amqp_url: str, namespace: str, brokers: list[RabbitMQBroker]
) -> None:
    url = f"{amqp_url}?queue_type=quorum"
    producer = make(url, namespace)
    brokers.append(producer)
    assert not producer.capabilities.priorities
    await producer.publish([out(1)])
    seen = []
    for _ in range(4):  # each consumer dies holding it; the 4th delivery is over the limit
        consumer = make(url, namespace)
        brokers.append(consumer)
        try:
            async with asyncio.timeout(1.5):
                seen += [d.deliveries for d in await consumer.receive(["q"], 1)]
        except TimeoutError:
            pass
        await consumer.close()
    assert seen == [1, 2, 3]
    [dead] = await producer.dead_letters("q")
    assert dead.message_id == "m1"
    assert "max_deliveries" in dead.reason


def test_unknown_queue_type_is_a_configuration_error(namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="queue_type"):
        make("amqp://guest:pw@127.0.0.1/?queue_type=stream", namespace)


async def test_bad_url_errors_never_show_the_password(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = "amqp://guest:s3cret-pw@127.0.0.1:1/"
    b = make(url, namespace, broker_unreachable_timeout=2.0)
    with caplog.at_level(logging.DEBUG), pytest.raises(BrokerConnectionError) as info:
        await b.connect()
    assert "s3cret-pw" not in str(info.value)
    assert "guest:***@" in str(info.value)
    assert "s3cret-pw" not in caplog.text
    await b.close()


# -- a private node for faults ------------------------------------------------------------


@pytest.fixture(scope="module")
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    need_rabbitmq_server()
    node = PrivateRabbit(tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield node
    finally:
        node.kill()


@pytest.fixture
async def private(
    private_rabbit: PrivateRabbit, namespace: str
) -> AsyncIterator[tuple[PrivateRabbit, list[RabbitMQBroker]]]:
    private_rabbit.start()
    made: list[RabbitMQBroker] = []
    try:
        yield private_rabbit, made
    finally:
        for b in made:
            await b.close()


async def publish_when_back(broker: RabbitMQBroker, batch: list[Outgoing], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await broker.publish(batch)
            return
        except BrokerConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_stale_ack_after_connections_are_closed_is_harmless(
    private: tuple[PrivateRabbit, list[RabbitMQBroker]], namespace: str
) -> None:
    node, made = private
    b = make(node.url, namespace, broker_unreachable_timeout=10.0)
    made.append(b)
    await b.connect()
    await b.publish([out(1)])
    [old] = await receive_n(b, 1)
    await asyncio.to_thread(node.close_all_connections)
    [again] = await receive_n(b, 1, timeout=10)  # consumer resumed; the server redelivered
    assert again.message_id == "m1"
    assert again.deliveries == 2
    await b.ack([old])  # a tag from the dead channel: dropped, not sent on the new one
    await b.nack([old], requeue=False, reason="stale")  # also dropped: no dead letter
    await b.ack([again])
    await publish_when_back(b, [out(2)], within=10)
    [fresh] = await receive_n(b, 1)
    assert (fresh.message_id, fresh.deliveries) == ("m2", 1)
    await b.ack([fresh])
    assert await b.dead_letters("q") == []
    assert await nothing_within(b, 0.5)


@pytest.mark.slow
async def test_server_restart_under_a_receiving_consumer(
    private: tuple[PrivateRabbit, list[RabbitMQBroker]], namespace: str
) -> None:
    node, made = private
    b = make(node.url, namespace, broker_unreachable_timeout=30.0)
    made.append(b)
    await b.connect()
    await b.publish([out(1)])  # durable queue, persistent message: survives the crash
    [held] = await receive_n(b, 1)
    waiting = asyncio.create_task(receive_n(b, 2, timeout=25))
    await asyncio.sleep(0.2)
    node.kill()
    await asyncio.to_thread(node.start)
    await publish_when_back(b, [out(2)], within=15)
    got = await waiting
    assert sorted((d.message_id, d.deliveries) for d in got) == [("m1", 2), ("m2", 1)]
    await b.ack([held, *got])
    assert await nothing_within(b, 0.5)


@pytest.mark.slow
async def test_receive_gives_up_after_broker_unreachable_timeout(
    private: tuple[PrivateRabbit, list[RabbitMQBroker]], namespace: str
) -> None:
    node, made = private
    b = make(node.url, namespace, broker_unreachable_timeout=1.5)
    made.append(b)
    await b.connect()
    waiting = asyncio.create_task(b.receive(["q"], 1))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    node.kill()
    with pytest.raises(BrokerConnectionError, match="unreachable"):
        await asyncio.wait_for(waiting, 10)
    assert 1.0 < time.monotonic() - started < 5.0


@pytest.fixture
async def proxy(private_rabbit: PrivateRabbit) -> AsyncIterator[FaultProxy]:
    private_rabbit.start()
    p = FaultProxy(private_rabbit.port)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def stored_ids(url: str, name: str) -> list[str]:
    """Every message id in a queue (drained with basic.get; the test owns the queue)."""
    conn = await aio_pika.connect(url)
    ids: list[str] = []
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(name, passive=True)
        while (msg := await queue.get(no_ack=True, fail=False)) is not None:
            ids.append(msg.message_id or "")
    finally:
        await conn.close()
    return ids


@pytest.mark.slow
async def test_publish_waits_for_a_reconnect_and_sends_each_message_once(
    private: tuple[PrivateRabbit, list[RabbitMQBroker]], proxy: FaultProxy, namespace: str
) -> None:
    node, made = private
    b = make(proxy.url, namespace, broker_unreachable_timeout=20.0)
    made.append(b)
    await b.connect()
    await b.publish([out(0)])
    proxy.refuse = True
    proxy.cut()  # the connection drops and cannot come back yet
    await asyncio.sleep(0.3)
    sending = asyncio.create_task(b.publish([out(i) for i in range(1, 501)]))
    await asyncio.sleep(2.0)
    assert not sending.done()  # waiting for the channel, not failing on the closed one
    proxy.refuse = False
    await asyncio.wait_for(sending, 20)
    ids = await stored_ids(node.url, f"{namespace}.q")
    assert sorted(ids) == sorted(f"m{i}" for i in range(501))  # each exactly once


@pytest.mark.slow
async def test_a_batch_cut_mid_publish_is_not_sent_again(
    private: tuple[PrivateRabbit, list[RabbitMQBroker]], proxy: FaultProxy, namespace: str
) -> None:
    node, made = private
    b = make(proxy.url, namespace, broker_unreachable_timeout=20.0)
    made.append(b)
    await b.connect()
    await b.publish([out(0)])
    total = 20_000
    start = proxy.forwarded
    sending = asyncio.create_task(b.publish([out(i) for i in range(1, total + 1)]))
    while proxy.forwarded - start < 300_000 and not sending.done():
        await asyncio.sleep(0.001)
    proxy.cut()  # mid-batch: some confirmed, some written without a confirm, some not written
    with pytest.raises(BrokerConnectionError, match="may or may not have been stored") as info:
        await asyncio.wait_for(sending, 30)
    published = int(str(info.value).split(" of ", 1)[0])
    assert 0 < published < total
    ids = await stored_ids(node.url, f"{namespace}.q")
    assert len(ids) == len(set(ids))  # nothing stored twice
    assert len(ids) >= published + 1  # every confirmed one is there (and m0)
