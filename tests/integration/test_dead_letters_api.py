"""`app.dead_letters` through a real worker on every broker: a poison message is dead-lettered,
listed with filters, shown, replayed (it runs) and purged; interruptions lose nothing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App
from aiotask.brokers import Outgoing
from aiotask.brokers.memory import MemoryBroker
from aiotask.exceptions import BrokerConnectionError, Reject
from aiotask.testing import start_worker
from tests.contract.test_broker_contract import receive_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from aiotask.brokers import DeadLetter
    from aiotask.deadletters import DeadLetterInfo
    from aiotask.settings import Settings

#: Arguments the touchy tasks accept; anything else is rejected into the dead letters.
ALLOWED: set[int] = set()


def make_app(url: str, backend: str, namespace: str) -> App:
    app = App("dlq", broker=url, backend=backend, key_prefix=namespace)

    @app.task(name="dl.touchy")
    async def touchy(x: int) -> int:
        if x not in ALLOWED:
            raise Reject(f"poison: {x}")
        return x * 2

    @app.task(name="dl.other", queue="other")
    async def other(x: int) -> int:
        if x not in ALLOWED:
            raise Reject(f"poison: {x}")
        return x

    return app


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
async def app(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[App]:
    if request.param == "memory":
        url = backend = "memory://"
    elif request.param == "amqp":  # RabbitMQ keeps no results: they go to Redis
        url, backend = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    else:
        url = backend = request.getfixturevalue(f"{request.param}_url")
    ALLOWED.clear()
    the_app = make_app(url, backend, namespace)
    try:
        yield the_app
    finally:
        await cleanup(the_app, request.param, namespace)


async def cleanup(app: App, kind: str, namespace: str) -> None:
    if kind == "amqp":
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        assert isinstance(app.broker, RabbitMQBroker)
        for queue in ("default", "other"):
            await app.broker.delete_queue(queue)
    await app.close()
    if kind in ("redis", "amqp"):
        from tests.conftest import REDIS_URL
        from tests.contract.conftest import delete_prefix

        await delete_prefix(REDIS_URL, namespace)


async def wait_dead(app: App, count: int, timeout: float = 10.0) -> list[DeadLetterInfo]:
    async with asyncio.timeout(timeout):
        while True:
            found = await app.dead_letters.list()
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)


async def test_poison_is_listed_filtered_shown_replayed_and_purged(app: App) -> None:
    async with start_worker(app, queues=["default", "other"]):
        one = await app.send_task("dl.touchy", args=[1])
        two = await app.send_task("dl.touchy", args=[2])
        three = await app.send_task("dl.other", args=[3])
        found = await wait_dead(app, 3)
        assert {(d.id, d.task, d.queue, d.reason) for d in found} == {
            (one.id, "dl.touchy", "default", "poison: 1"),
            (two.id, "dl.touchy", "default", "poison: 2"),
            (three.id, "dl.other", "other", "poison: 3"),
        }
        assert {d.id for d in await app.dead_letters.list(task="dl.touchy")} == {one.id, two.id}
        assert {d.id for d in await app.dead_letters.list(task="dl.*", queue="other")} == {three.id}
        assert [d.id for d in await app.dead_letters.list(reason="POISON: 2")] == [two.id]
        assert len(await app.dead_letters.list(limit=2)) == 2

        shown = await app.dead_letters.show(one.id)
        assert shown is not None and shown.message is not None
        assert shown.to_dict(full=True)["args"] == [1]
        assert await app.dead_letters.show("no-such-id") is None

        ALLOWED.update({1, 2})
        report = await app.dead_letters.replay([one.id, "no-such-id"])
        assert (report.ids, report.missing) == ([one.id], ["no-such-id"])
        assert await one.get(timeout=10) == 2
        assert {d.id for d in await app.dead_letters.list()} == {two.id, three.id}

        purged = await app.dead_letters.purge(task="dl.other")
        assert (purged.ids, purged.missing) == ([three.id], [])
        everything = await app.dead_letters.replay()  # all that are left
        assert everything.ids == [two.id]
        assert await two.get(timeout=10) == 4
        assert await app.dead_letters.list() == []
    stats = {s.queue: s for s in await app.dead_letters.queue_stats()}
    assert {"default", "other"} <= set(stats)
    assert stats["default"].dead == stats["other"].dead == 0


async def test_an_undecodable_dead_letter_lists_without_a_task_and_replays_as_bytes(
    app: App,
) -> None:
    await app.connect()
    garbage = b"\x00\x01 not a message"
    await app.broker.publish([Outgoing("default", garbage, "junk-1")])
    got = await receive_all(app.broker, ["default"], 1)
    await app.broker.nack(got, requeue=False, reason="undecodable: test")
    [info] = await app.dead_letters.list(queue="default")
    assert (info.id, info.task, info.reason) == ("junk-1", None, "undecodable: test")
    assert "not a message" in info.to_dict(full=True)["body"]
    assert (await app.dead_letters.replay(["junk-1"])).ids == ["junk-1"]
    [again] = await receive_all(app.broker, ["default"], 1)
    assert (again.message_id, again.body, again.deliveries) == ("junk-1", garbage, 1)
    await app.broker.ack([again])
    assert await app.dead_letters.list() == []


class CrashingBroker(MemoryBroker):
    """memory:// whose publish or dead-letter delete fails on demand (a crash mid-replay)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.fail_publish = False
        self.fail_delete = False

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        if self.fail_publish:
            raise BrokerConnectionError("publish failed")
        await super().publish(batch)

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        if self.fail_delete:
            raise BrokerConnectionError("delete failed")
        return await super().delete_dead_letters(queue, dead)


async def dead_lettered(app: App, *ids: str) -> None:
    await app.broker.publish([Outgoing("default", b"body-" + i.encode(), i) for i in ids])
    got = await receive_all(app.broker, ["default"], len(ids))
    await app.broker.nack(got, requeue=False, reason="poison")


async def test_replay_interrupted_after_publishing_duplicates_and_never_loses() -> None:
    app = App("crash", broker="memory://", backend="memory://")
    broker = app._broker = CrashingBroker(app.conf)
    await app.connect()
    await dead_lettered(app, "a", "b")

    broker.fail_publish = True  # nothing reached the queue: the dead letters stay
    with pytest.raises(BrokerConnectionError):
        await app.dead_letters.replay()
    assert [d.id for d in await app.dead_letters.list()] == ["a", "b"]
    [stats] = await broker.queue_stats(["default"])
    assert stats.ready == 0

    broker.fail_publish, broker.fail_delete = False, True  # copies stored, then the crash
    with pytest.raises(BrokerConnectionError):
        await app.dead_letters.replay()
    assert [d.id for d in await app.dead_letters.list()] == ["a", "b"]  # kept: a duplicate
    got = await receive_all(broker, ["default"], 2)
    assert sorted(d.message_id for d in got) == ["a", "b"]
    await broker.ack(got)

    broker.fail_delete = False  # run again: the dead letters go, the copies run (twice)
    assert sorted((await app.dead_letters.replay()).ids) == ["a", "b"]
    assert await app.dead_letters.list() == []
    await app.close()


async def test_replay_goes_in_batches_and_keeps_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiotask import deadletters
    from aiotask.protocol import Message, encode

    monkeypatch.setattr(deadletters, "REPLAY_BATCH", 3)
    app = App("batches", broker="memory://", backend="memory://")
    await app.connect()
    bodies: dict[str, Any] = {}
    batch = []
    for i in range(7):
        body = encode(Message(f"id{i}", "proj.x", priority=9 if i == 6 else 0))
        bodies[f"id{i}"] = body
        batch.append(Outgoing("default", body, f"id{i}"))
    await app.broker.publish(batch)
    got = await receive_all(app.broker, ["default"], 7)
    await app.broker.nack(got, requeue=False, reason="poison")
    assert len((await app.dead_letters.replay()).ids) == 7
    first = await receive_all(app.broker, ["default"], 1)
    assert first[0].message_id == "id6"  # its priority came from the envelope
    rest = await receive_all(app.broker, ["default"], 6)
    assert {d.message_id for d in rest} == {f"id{i}" for i in range(6)}
    assert all(d.body == bodies[d.message_id] for d in first + rest)
    await app.close()
