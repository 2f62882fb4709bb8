"""Fairness across keys on RabbitMQ beyond the contract: key queues on quorum queues, workers
started after the keys were announced, idle key queues parked (never deleted) and woken by the
next publish's announcement or the park check, dead-letter replay into the key's queue
(unique names per test)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.brokers import Delivery, Outgoing
from aiotask.brokers import _rabbitmq_fair as fair
from aiotask.brokers._rabbitmq_delivery import held as held_of
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from tests.contract.test_broker_contract import receive_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    Make = Callable[..., RabbitMQBroker]

pytestmark = pytest.mark.amqp


def keyed(key: str, i: int, queue: str = "q") -> Outgoing:
    return Outgoing(queue, f"{key}-{i}".encode(), f"{key}{i}", fair_key=key)


@pytest.fixture
async def make(amqp_url: str, namespace: str) -> AsyncIterator[Make]:
    """Brokers of this test's namespace (settings as keywords); all deleted and closed after."""
    made: list[RabbitMQBroker] = []

    def new(**settings: object) -> RabbitMQBroker:
        conf = Settings(broker_url=amqp_url, key_prefix=namespace, **settings)  # type: ignore[arg-type]
        b = RabbitMQBroker(amqp_url, conf, f"app-{namespace}")
        made.append(b)
        return b

    try:
        yield new
    finally:
        for b in made:
            await b.close()
        cleaner = new()
        await cleaner.connect()
        await cleaner.delete_queue("q")  # its key queues and announcement stream too
        await cleaner.close()


async def drain(broker: RabbitMQBroker, want: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < want:
        batch = await receive_all(broker, ["q"], 1)
        await broker.ack(batch)
        got += batch
    return got


async def test_quorum_key_queues_take_turns_and_dead_letter(make: Make) -> None:
    broker = make(rabbitmq_queue_type="quorum", max_deliveries=3)
    await broker.connect()
    await broker.publish([keyed("a", i) for i in range(20)] + [keyed("b", i) for i in range(3)])
    got = await drain(broker, 6)
    assert sum(1 for d in got if d.message_id.startswith("b")) >= 2, [d.message_id for d in got]
    [d] = await receive_all(broker, ["q"], 1)
    await broker.nack([d], requeue=False, reason="test: poison")
    assert [x.message_id for x in await broker.dead_letters("q")] == [d.message_id]
    (stats,) = await broker.queue_stats(["q"])
    assert stats.dead == 1


async def test_a_worker_started_later_learns_the_existing_keys(make: Make) -> None:
    producer = make()
    await producer.connect()
    await producer.publish([keyed("early", i) for i in range(3)])
    await producer.close()
    worker = make()
    await worker.connect()
    got = await receive_all(worker, ["q"], 3, timeout=10)
    assert sorted(d.message_id for d in got) == ["early0", "early1", "early2"]
    await worker.ack(got)


async def quickly_idle(
    make: Make, **settings: object
) -> tuple[RabbitMQBroker, str, list[Delivery]]:
    """A broker that parks key queues after 0.3 s idle, holding key k's first message."""
    broker = make(**settings)
    await broker.connect()
    broker._fair.idle = 0.3
    await broker.publish([keyed("k", 0)])
    held = await receive_all(broker, ["q"], 1)
    return broker, fair.key_queue(broker._names, "q", "k"), held


async def parked(broker: RabbitMQBroker, name: str) -> None:
    """Wait until the worker parks key queue `name`: kept on the server, empty, unconsumed."""
    for _ in range(100):
        if name in broker._fair._parked:
            break
        await asyncio.sleep(0.05)
    assert name in broker._fair._parked
    assert name not in broker._con.keyed
    assert await fair.probe(broker._admin, name) == (0, 0)  # kept, not deleted


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_an_idle_key_queue_is_parked_and_a_later_publish_wakes_it(
    make: Make, queue_type: str
) -> None:
    """Workers never delete key queues; a publish to a parked key announces it again (its last
    announcement is older than `redeclare`), so it is consumed at once, long before the
    park check (set far beyond the receive's timeout here)."""
    broker, name, held = await quickly_idle(make, rabbitmq_queue_type=queue_type)
    broker._fpub.redeclare = 0.15  # below idle, as REDECLARE_S is below IDLE_S
    broker._fair.park_check = 600.0
    await broker.ack(held)
    await parked(broker, name)
    await broker.publish([keyed("k", 1)])
    [again] = await receive_all(broker, ["q"], 1, timeout=10)
    assert again.message_id == "k1"
    assert name in broker._con.keyed
    await broker.ack([again])


async def test_an_announced_key_queue_stays_consumed(make: Make) -> None:
    """An announcement heard while consuming keeps the key queue consumed `idle` longer (a
    publish may follow it), even without deliveries."""
    broker, name, held = await quickly_idle(make)
    await broker.ack(held)
    for _ in range(12):  # 1.2 s: four idle periods, but announced every 0.1 s
        broker._fair.learn("q", ["k"])
        await asyncio.sleep(0.1)
        assert name in broker._con.keyed
    await parked(broker, name)


async def test_the_park_check_backs_off_and_finds_a_message(make: Make) -> None:
    """The safety net: a parked key queue is probed at doubling intervals and consumed again
    when a message reached it without an announcement; parked again, it starts over."""
    broker, name, held = await quickly_idle(make)
    broker._fpub.redeclare = 600.0  # no announcement: only the park check can find k1
    broker._fair.park_check = 0.2
    await broker.ack(held)
    await parked(broker, name)
    for _ in range(100):
        if broker._fair._parked.get(name, (0.0, 0.0))[1] >= 0.8:
            break
        await asyncio.sleep(0.05)
    assert broker._fair._parked[name][1] >= 0.8  # looked at twice, backing off
    await broker.publish([keyed("k", 1)])
    [again] = await receive_all(broker, ["q"], 1, timeout=20)
    assert again.message_id == "k1"
    await broker.ack([again])
    await parked(broker, name)
    assert broker._fair._parked[name][1] == 0.2  # reset once consumed


async def test_a_worker_announces_keys_it_drains(make: Make) -> None:
    """A key with a backlog is announced again by the workers draining it (every `keep` s),
    so it stays in the stream's retention while no producer publishes to it."""
    producer = make()
    await producer.connect()
    worker = make()
    await worker.connect()
    worker._fair.idle = 2.0  # a sweep every second
    worker._fair.keep = 0.0
    sent: list[bytes] = []
    announce = worker._fpub.announce

    async def record(queue: str, bodies: Sequence[bytes]) -> None:
        sent.extend(bodies)
        await announce(queue, bodies)

    worker._fpub.announce = record  # type: ignore[method-assign]
    await producer.publish([keyed("k", 0)])
    await worker.ack(await receive_all(worker, ["q"], 1, timeout=10))
    await asyncio.sleep(1.5)  # a sweep notes the deliveries so far
    assert sent == []
    await producer.publish([keyed("k", 1)])  # announced by the producer only once, before k0
    await worker.ack(await receive_all(worker, ["q"], 1, timeout=10))
    for _ in range(50):  # the next sweep sees a new delivery from k
        if sent:
            break
        await asyncio.sleep(0.1)
    assert sent == [b"k:k"]


async def test_the_prober_reopens_its_channel_after_a_missing_queue(make: Make) -> None:
    broker = make()
    await broker.connect()
    await broker.publish([keyed("k", 0)])
    prober = broker._fair._probe
    name = fair.key_queue(broker._names, "q", "k")
    assert await prober(name) == (1, 0)
    assert await prober(name) == (1, 0)
    assert prober.opened == 1  # one channel for many probes
    assert await prober(f"{name}-missing") is None  # a 404 closes the channel
    assert await prober(name) == (1, 0)
    assert prober.opened == 2
    await broker.close()


async def test_a_key_queue_with_a_message_held_is_not_parked(make: Make) -> None:
    broker, name, held = await quickly_idle(make)
    await asyncio.sleep(1.0)  # several sweeps: idle by deliveries, but one is unsettled
    assert name in broker._con.keyed
    assert await fair.probe(broker._admin, name) is not None
    await broker.nack(held, requeue=True)  # the copy goes back to the key's queue
    [again] = await receive_all(broker, ["q"], 1, timeout=10)
    assert (again.message_id, again.deliveries) == ("k0", 1)
    await broker.ack([again])


async def test_dead_letter_replay_goes_back_to_the_key_queue(
    make: Make, amqp_url: str, namespace: str
) -> None:
    broker = make()
    await broker.connect()
    app = App("fair-replay", broker=amqp_url, key_prefix=namespace)

    @app.task(name="fair.replay", queue="q", fairness_key="tenant")
    async def job(tenant: str) -> None: ...

    async with app:
        await job.send("acme")
        [d] = await receive_all(broker, ["q"], 1)
        await broker.nack([d], requeue=False, reason="test")
        await broker.close()  # no consumer: the replayed copy stays where it was put
        report = await app.dead_letters.replay(queue="q")
        assert len(report.ids) == 1
        sender = app.broker
        assert isinstance(sender, RabbitMQBroker)
        name = fair.key_queue(sender._names, "q", "acme")
        assert await fair.probe(sender._admin, name) == (1, 0)  # in the key's queue again


async def test_a_failed_follow_is_tried_again_without_a_delivery(make: Make) -> None:
    """Following the announcements failed (as when the stream is not up yet after a node
    restart) and no delivery comes to wake the receive: the worker tries again RETRY_S later
    by itself. Before, its key queues stayed unconsumed for good (issue 18)."""
    producer = make()
    await producer.connect()
    await producer.publish([keyed("k", 0)])
    worker = make()
    await worker.connect()
    follow, calls = worker._fair._follow, []

    async def fail_once(queue: str) -> None:
        calls.append(queue)
        if len(calls) == 1:
            raise BrokerConnectionError("test: the stream is not up yet")
        await follow(queue)

    worker._fair._follow = fail_once  # type: ignore[method-assign]
    [d] = await receive_all(worker, ["q"], 1, timeout=fair.RETRY_S * 5)
    assert (d.message_id, calls) == ("k0", ["q", "q"])
    await worker.ack([d])


async def busy_key_leaves_credit(broker: RabbitMQBroker, tag: str) -> None:
    """Key a holds the whole prefetch (2, unacked); b's message still arrives at once, and a
    never gets more than its prefetch (its backlog cannot take the spare)."""
    await broker.publish([keyed(f"a{tag}", i) for i in range(10)])
    held = await receive_all(broker, ["q"], 2)
    await broker.publish([keyed(f"b{tag}", 0)])
    got = await receive_all(broker, ["q"], 1)  # before: the channel-wide prefetch was full
    assert [d.message_id for d in got] == [f"b{tag}0"]
    await asyncio.sleep(0.5)  # room for a wrongly delivered message of a to arrive
    name = fair.key_queue(broker._names, "q", f"a{tag}")
    assert broker._con.held(name) == 2
    await broker.ack([*held, *got])


async def test_a_busy_key_leaves_credit_for_another_key(make: Make) -> None:
    """Classic queues share one channel-wide prefetch; key queues have a spare on top, so
    another key's message does not wait for an ack and then for RabbitMQ to choose its queue
    over the busy key's (which it often did not, several times running: issue 18)."""
    broker = make(prefetch=2)
    await broker.connect()
    await busy_key_leaves_credit(broker, "")


async def test_a_reopened_consume_channel_keeps_the_prefetch_per_consumer(make: Make) -> None:
    """aio-pika restores only the last basic.qos on a reopened channel (the channel-wide one):
    without the per-consumer limit sent again, a busy key took the spare too."""
    broker = make(prefetch=2)
    await broker.connect()
    await broker.publish([keyed("x", 0)])
    [d] = await receive_all(broker, ["q"], 1)
    raw = held_of(d)[3].channel
    await raw.basic_ack(10**6)  # an unknown delivery tag: the server closes the channel
    for _ in range(100):
        if broker._con.keyed == {} and raw.is_closed:
            break
        await asyncio.sleep(0.05)
    assert raw.is_closed
    [again] = await receive_all(broker, ["q"], 1, timeout=10)  # consumed again, redelivered
    assert held_of(again)[3].channel is not raw
    await broker.ack([again])
    await busy_key_leaves_credit(broker, "r")
