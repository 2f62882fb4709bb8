"""Revoke and ignore_result through a real worker, on every broker, proved by what the worker did.

`revoke()` itself records REVOKED (and `get()` then raises TaskRevoked) whatever the workers
do, and an ignored result reads PENDING exactly like a lost message. So these tests look at
side effects instead: whether the task body ran (a counter it bumps), whether the worker took
and settled the message (its processed count, nothing left in the queue, nothing redelivered
once its lease has lapsed or its consumer has gone, nothing dead-lettered).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from aiotask import App, Task
from aiotask.exceptions import TaskRevoked
from aiotask.testing import start_worker
from aiotask.worker.revocations import REVOCATIONS_REFRESH

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.worker import Worker

#: Short leases, so "not redelivered after the lease" costs a couple of seconds.
LEASE = 1.0
#: Upper bound for anything that should happen promptly (generous: a shared 2-core machine).
SOON = 10.0
#: A broadcast must reach the worker before its periodic reload of every tombstone would.
BROADCAST_WITHIN = REVOCATIONS_REFRESH / 2


@dataclass
class Kit:
    """One app per test: its tasks, and the side effects they leave."""

    app: App
    record: Task[[str], str]
    hold: Task[[str], str]
    #: key -> times the body of `record` / `hold` ran to its end
    ran: Counter[str] = field(default_factory=Counter)
    started: set[str] = field(default_factory=set)
    #: keys whose `hold` was cancelled (revoke with terminate=True)
    cancelled: set[str] = field(default_factory=set)
    #: key -> event that lets `hold` finish
    gates: dict[str, asyncio.Event] = field(default_factory=dict)


def make_kit(url: str, backend: str, namespace: str) -> Kit:
    app = App(
        f"revoke-{namespace}",
        broker=url,
        backend=backend,
        key_prefix=namespace,
        visibility_timeout=LEASE,
        shutdown_grace=5.0,
    )
    ran: Counter[str] = Counter()
    started: set[str] = set()
    cancelled: set[str] = set()
    gates: dict[str, asyncio.Event] = {}

    @app.task(name="r.record")
    async def record(key: str) -> str:
        ran[key] += 1
        return key

    @app.task(name="r.hold")
    async def hold(key: str) -> str:
        started.add(key)
        try:
            await gates.setdefault(key, asyncio.Event()).wait()
        except asyncio.CancelledError:
            cancelled.add(key)
            raise
        ran[key] += 1
        return key

    return Kit(app, record, hold, ran, started, cancelled, gates)


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
async def kit(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Kit]:
    if request.param == "memory":
        url = backend = "memory://"
    elif request.param == "amqp":  # RabbitMQ keeps no results: they go to Redis
        url, backend = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    else:
        url = backend = request.getfixturevalue(f"{request.param}_url")
    k = make_kit(url, backend, namespace)
    try:
        yield k
    finally:
        await k.app.connect()
        await k.app.broker.purge("default")
        if request.param == "amqp":
            from aiotask.brokers.rabbitmq import RabbitMQBroker

            assert isinstance(k.app.broker, RabbitMQBroker)
            await k.app.broker.delete_queue("default")
        await k.app.close()
        if "redis" in (url.split(":")[0], backend.split(":")[0]):
            from tests.contract.conftest import delete_prefix

            await delete_prefix(request.getfixturevalue("redis_url"), namespace)


async def until(condition: object, what: str, timeout: float = SOON) -> None:
    """Wait until `condition()` is true; fail saying `what` did not happen."""
    assert callable(condition)
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g}s: {what}") from None


async def settled(worker: Worker, count: int) -> None:
    """The worker finished `count` messages and acked, nacked or dead-lettered all it held."""
    dispatcher = worker.dispatcher
    await until(
        lambda: dispatcher.processed >= count and not dispatcher.held,
        f"the worker settled {count} messages (processed {dispatcher.processed}, "
        f"holding {len(dispatcher.held)})",
    )


async def assert_queue_stays_empty(app: App, *ids: str) -> None:
    """Once the worker is gone, nothing it held comes back: not on lease expiry (sqlite, redis,
    memory), nor because its consumer closed (AMQP), and nothing was dead-lettered instead."""
    await app.connect()
    try:
        broker = app.broker
        try:  # the worker stopped before this call: anything unsettled is due back within
            # a lease of its last renewal; half a lease more for a loaded machine
            async with asyncio.timeout(LEASE * 1.5):
                back = await broker.receive(["default"], 10)
        except TimeoutError:
            back = []
        assert [d.message_id for d in back] == [], "a settled message was delivered again"
        dead = [d.message_id for d in await broker.dead_letters("default")]
        assert not set(ids) & set(dead), "a revoked message was dead-lettered, not acked"
    finally:
        await app.close()


async def test_revoke_before_any_worker_runs_is_skipped_and_acked(kit: Kit) -> None:
    app = kit.app
    async with app:
        revoked = await kit.record.send("offline")
        await revoked.revoke()  # no worker yet: only the tombstone remembers
        behind = await kit.record.send("behind")
    async with start_worker(app, concurrency=1, prefetch=1) as worker:
        # prefetch 1: "behind" is fetched only after the revoked message ahead was settled
        assert await behind.get(timeout=SOON) == "behind"
        await settled(worker, 2)
    assert kit.ran == Counter({"behind": 1}), "the revoked task ran"
    assert worker.dispatcher.processed == 2, "the worker did not take the revoked message once"
    await assert_queue_stays_empty(app, revoked.id)


async def test_revoke_of_a_countdown_task_skips_it_when_due(kit: Kit) -> None:
    app = kit.app
    async with start_worker(app) as worker:
        revoked = await kit.record.apply_async(args=("later",), countdown=0.5)
        await revoked.revoke()
        await settled(worker, 1)  # became due, delivered, skipped and acked
        assert kit.ran["later"] == 0, "the revoked task ran"
        assert await (await kit.record.send("next")).get(timeout=SOON) == "next"
        with pytest.raises(TaskRevoked):
            await revoked.get(timeout=SOON)
    assert kit.ran == Counter({"next": 1})
    assert worker.dispatcher.processed == 2
    await assert_queue_stays_empty(app, revoked.id)


async def test_revoke_reaches_a_message_already_prefetched(kit: Kit) -> None:
    app = kit.app
    async with start_worker(app, concurrency=1, prefetch=5) as worker:
        blocker = await kit.hold.send("blocker")
        queued = await kit.record.send("prefetched")
        await until(lambda: len(worker.dispatcher.held) == 2, "the worker prefetched both")
        assert kit.ran["prefetched"] == 0
        await queued.revoke()
        await until(
            lambda: queued.id in worker.dispatcher.executor.revoked,
            "the revoke broadcast reached the worker",
            BROADCAST_WITHIN,
        )
        kit.gates.setdefault("blocker", asyncio.Event()).set()
        assert await blocker.get(timeout=SOON) == "blocker"
        await settled(worker, 2)
    assert kit.ran == Counter({"blocker": 1}), "the prefetched revoked task ran"
    assert worker.dispatcher.processed == 2
    await assert_queue_stays_empty(app, queued.id)


async def test_revoke_terminate_cancels_a_running_coroutine_and_acks_it(kit: Kit) -> None:
    app = kit.app
    async with start_worker(app) as worker:
        running = await kit.hold.send("running")
        await until(lambda: "running" in kit.started, "the task started")
        await running.revoke(terminate=True)
        # The task itself was cancelled, while the worker runs on (not abandoned at shutdown).
        await until(lambda: "running" in kit.cancelled, "the running task was cancelled")
        await settled(worker, 1)
        assert not worker.dispatcher.running
        assert await (await kit.record.send("after")).get(timeout=SOON) == "after"
        assert await running.state() == "REVOKED"
    assert kit.ran == Counter({"after": 1}), "the terminated task ran to its end"
    assert worker.dispatcher.processed == 2
    await assert_queue_stays_empty(app, running.id)


async def test_ignore_result_runs_the_task_and_stores_nothing(kit: Kit) -> None:
    app = kit.app
    async with start_worker(app) as worker:
        ignored = await kit.record.apply_async(args=("ignored",), ignore_result=True)
        await until(lambda: kit.ran["ignored"] == 1, "the ignore_result task ran")
        await settled(worker, 1)
        backend = await app.result_backend()
        assert await backend.get(ignored.id) is None, "a result was stored"
        assert await ignored.state() == "PENDING"
        kept = await kit.record.send("kept")  # same path with a result: it is stored
        assert await kept.get(timeout=SOON) == "kept"
    assert kit.ran == Counter({"ignored": 1, "kept": 1})
    assert worker.dispatcher.processed == 2
    await assert_queue_stays_empty(app, ignored.id)
