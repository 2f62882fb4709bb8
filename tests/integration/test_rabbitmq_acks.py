"""RabbitMQ acks written as basic.ack(multiple=True) and consumers on the raw channel.

A multiple ack settles every unsettled tag up to its own on the channel, so it must only be
used when all of them are in the batch: an out-of-order batch never acks a message that is
still running. Messages left unacked come back, and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest

from aiotask.brokers._rabbitmq_delivery import held
from aiotask.exceptions import BrokerConnectionError
from tests.integration.test_rabbitmq_broker import (  # fixtures and helpers, no tests
    broker,
    brokers,
    make,
    nothing_within,
    out,
    raw,
    receive_n,
)

if TYPE_CHECKING:
    import aio_pika

    from aiotask.brokers.rabbitmq import RabbitMQBroker

pytestmark = pytest.mark.amqp
__all__ = ["broker", "brokers", "raw"]


async def test_out_of_order_ack_batches_settle_exactly_the_acked_messages(
    amqp_url: str, namespace: str, broker: RabbitMQBroker, brokers: list[RabbitMQBroker]
) -> None:
    await broker.publish([out(i) for i in range(12)])
    worker = make(amqp_url, namespace)
    brokers.append(worker)
    got = {d.message_id: d for d in await receive_n(worker, 12)}
    # a covered run (m0-m2) plus stragglers past a gap (m3 still running)
    await worker.ack([got[m] for m in ("m5", "m1", "m0", "m2", "m6")])
    await worker.ack([got["m4"]])  # m3 is below it and unsettled: never covered
    await worker.ack([got[m] for m in ("m9", "m8")])
    await worker.nack([got["m10"]], requeue=False, reason="test")  # a settle by republish
    await worker.close()  # m3, m7 and m11 were never settled: the server requeues them
    back = await receive_n(broker, 3)
    assert sorted(d.message_id for d in back) == ["m11", "m3", "m7"]
    assert {d.deliveries for d in back} == {2}
    await broker.ack(back)
    assert await nothing_within(broker, 0.5)


async def test_a_run_covered_after_its_gap_is_acked_fills_in(
    amqp_url: str, namespace: str, broker: RabbitMQBroker, brokers: list[RabbitMQBroker]
) -> None:
    await broker.publish([out(i) for i in range(6)])
    worker = make(amqp_url, namespace)
    brokers.append(worker)
    got = {d.message_id: d for d in await receive_n(worker, 6)}
    await worker.ack([got["m1"], got["m2"]])  # m0 unsettled: sent one by one
    await worker.ack([got["m0"], got["m3"]])  # now m0-m3 are covered
    await worker.close()
    back = await receive_n(broker, 2)
    assert sorted(d.message_id for d in back) == ["m4", "m5"]
    await broker.ack(back)
    assert await nothing_within(broker, 0.5)


async def test_a_consumer_cancelled_by_the_server_consumes_again(
    broker: RabbitMQBroker, raw: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await broker.publish([out(0)])
    [first] = await receive_n(broker, 1)
    await broker.ack([first])
    waiting = asyncio.create_task(receive_n(broker, 1, timeout=10.0))
    await asyncio.sleep(0.2)
    await raw.queue_delete(f"{namespace}.q")  # the server cancels the consumer
    async with asyncio.timeout(10.0):
        while True:  # unroutable until the woken receive() has declared the queue again
            try:
                await broker.publish([out(1)])
                break
            except BrokerConnectionError:
                await asyncio.sleep(0.1)
    [again] = await waiting
    assert again.message_id == "m1"
    await broker.ack([again])


async def test_close_while_the_consume_channel_closes_raises_nothing_and_duplicates_nothing(
    amqp_url: str,
    namespace: str,
    broker: RabbitMQBroker,
    brokers: list[RabbitMQBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker told to stop while its consumer waits for an RPC on the consume channel (a key
    queue's declare or basic.consume): aiormq closes a channel whose RPC is cancelled, and
    refuses basic.cancel on it until the server confirms. close() raised that refusal (the
    worker exited 1, once in CI); the channel's deliveries return with it, once each."""
    await broker.publish([out(i) for i in range(4)])
    worker = make(amqp_url, namespace)
    brokers.append(worker)
    [first] = await receive_n(worker, 1)  # consuming; the other three are prefetched
    channel = held(first)[3].channel
    for turns in range(1, 20):  # cancel the RPC while it waits for its reply
        rpc = asyncio.ensure_future(channel.basic_qos(prefetch_count=8))
        for _ in range(turns):
            await asyncio.sleep(0)
        rpc.cancel()
        await asyncio.gather(rpc, return_exceptions=True)
        if "because RPC call" in caplog.text:
            break
    assert "because RPC call" in caplog.text, "no RPC was cancelled while waiting for its reply"
    assert not channel.is_closed  # closing: the server's close-ok is not read yet
    await worker.close()
    back = await receive_n(broker, 4)
    assert sorted(d.message_id for d in back) == ["m0", "m1", "m2", "m3"]
    await broker.ack(back)
    assert await nothing_within(broker, 0.5)


async def test_a_receive_cancelled_anywhere_leaves_the_consume_channel_open(
    amqp_url: str,
    namespace: str,
    broker: RabbitMQBroker,
    brokers: list[RabbitMQBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consume channel carries every delivery of a worker: a cancelled RPC on it (a worker
    told to stop while it declared or consumed a queue) made aiormq close it, and the acks of
    the tasks finishing in the warm shutdown were lost (the tasks ran again elsewhere)."""
    await broker.publish([out(i, fair_key=key) for i, key in enumerate("aabb")])
    closed: list[str] = []
    for turns in range(0, 240, 2):  # cancel the first receive at every point of its work
        worker = make(amqp_url, namespace)
        brokers.append(worker)
        first = asyncio.ensure_future(worker.receive(["q"], 1))
        for _ in range(turns):
            await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        conn = worker._con.conn
        consume = conn.transport.connection if conn is not None and conn.transport else None
        closed += [
            f"turn {turns}: {r.getMessage()}"
            for r in caplog.records
            if r.name == "aiormq.channel"
            and "because RPC call" in r.msg
            and isinstance(r.args, tuple)
            and getattr(r.args[0], "connection", None) is consume
            and getattr(r.args[0], "number", None) == 1  # the consume channel, not a feed
        ]
        caplog.clear()
        await worker.close()
    assert not closed


async def test_cancel_consumer_while_the_queue_is_being_consumed_stops_it(
    amqp_url: str, namespace: str, broker: RabbitMQBroker, brokers: list[RabbitMQBroker]
) -> None:
    """cancel-consumer right after a worker started: its first receive may still be declaring
    and consuming the queue. The consume is finished even though that receive is cancelled
    (as the worker's queue follower does), so the cancel must wait for it and then cancel it:
    otherwise the server keeps delivering to a buffer no receive takes from."""
    worker = make(amqp_url, namespace)
    brokers.append(worker)
    await worker.connect()
    con = worker._con
    declare, entered, release = con._declare, asyncio.Event(), asyncio.Event()

    async def slow_declare(channel: Any, queue: str) -> Any:
        if queue == "q2":
            entered.set()
            await release.wait()
        return await declare(channel, queue)

    con._declare = slow_declare
    receiving = asyncio.create_task(worker.receive(["q", "q2"], 10))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(worker.stop_consuming("q2"))
        await asyncio.sleep(0.05)
        receiving.cancel()
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        await asyncio.wait_for(stopping, 10)
        assert "q2" not in con.consumers
        # another worker gets every message of q2: none goes to the cancelled consumer
        await broker.publish([out(i, queue="q2") for i in range(4)])
        other = make(amqp_url, namespace)
        brokers.append(other)
        got: list[str] = []
        async with asyncio.timeout(5):
            while len(got) < 4:
                batch = await other.receive(["q2"], 4)
                got += [d.message_id for d in batch]
                await other.ack(batch)
        assert sorted(got) == ["m0", "m1", "m2", "m3"]
    finally:
        release.set()
        await broker.delete_queue("q2")
