"""Unique tasks through a real worker on every store: memory, SQLite, Redis, PostgreSQL, and
RabbitMQ with a Redis result backend (its lock store). Each test proves one row of the lifetime
table in docs/task-options.md by what the store holds and what the worker ran."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App, Task
from aiotask.coordination.unique import unique_key
from aiotask.exceptions import Reject, TaskRevoked
from aiotask.testing import start_worker
from tests.integration.test_revoke import settled, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SOON = 10.0


@dataclass
class Kit:
    app: App
    work: Task[[str], str]
    hold: Task[[str], str]
    hold_started: Task[[str], str]
    flaky: Task[[str], str]
    boom: Task[[str], str]
    refuse: Task[[str], str]
    save: Task[[str, str], str]
    slow_save: Task[[str, str], str]
    ran: Counter[str] = field(default_factory=Counter)
    started: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    async def holder(self, task: Task[Any, Any], *args: Any) -> str | None:
        """Who holds the unique lock of `task(*args)` now (None: free)."""
        backend = await self.app.result_backend()
        return await backend.lock_store().get(unique_key(task.name, None, args, {}))


def make_kit(url: str, backend: str, namespace: str) -> Kit:
    app = App(
        f"unique-{namespace}",
        broker=url,
        backend=backend,
        key_prefix=namespace,
        visibility_timeout=2.0,
        shutdown_grace=5.0,
    )
    kit = Kit(app, *([None] * 8))  # type: ignore[arg-type]

    @app.task(name="u.work", unique=True)
    async def work(key: str) -> str:
        kit.ran[key] += 1
        return key

    @app.task(name="u.hold", unique=True)
    async def hold(key: str) -> str:
        kit.started.append(key)
        await kit.gate(key).wait()
        kit.ran[key] += 1
        return key

    @app.task(name="u.hold_started", unique=True, unique_until="started")
    async def hold_started(key: str) -> str:
        kit.started.append(key)
        await kit.gate(key).wait()
        kit.ran[key] += 1
        return key

    @app.task(
        name="u.flaky",
        unique=True,
        autoretry_for=(ValueError,),
        max_retries=3,
        default_retry_delay=0.3,
        retry_jitter=False,
    )
    async def flaky(key: str) -> str:
        kit.ran[key] += 1
        if kit.ran[key] == 1:
            raise ValueError("first attempt fails")
        await kit.gate(key).wait()
        return key

    @app.task(name="u.boom", unique=True, max_retries=0)
    async def boom(key: str) -> str:
        kit.ran[key] += 1
        raise RuntimeError("boom")

    @app.task(name="u.refuse", unique=True)
    async def refuse(key: str) -> str:
        kit.ran[key] += 1
        raise Reject("not for us", requeue=False)

    @app.task(name="u.save", debounce=0.4, debounce_key="doc")
    async def save(doc: str, text: str) -> str:
        kit.ran[text] += 1
        return text

    @app.task(name="u.slow_save", debounce=0.2, debounce_key="doc")
    async def slow_save(doc: str, text: str) -> str:
        kit.started.append(text)
        await kit.gate(text).wait()
        kit.ran[text] += 1
        return text

    kit.save, kit.slow_save = save, slow_save
    kit.work, kit.hold, kit.hold_started = work, hold, hold_started
    kit.flaky, kit.boom, kit.refuse = flaky, boom, refuse
    return kit


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp", "postgres"])
async def kit(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Kit]:
    if request.param == "memory":
        url = backend = "memory://"
    elif request.param == "amqp":  # RabbitMQ keeps no results: locks live in the Redis backend
        url, backend = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    else:
        url = backend = request.getfixturevalue(f"{request.param}_url")
    k = make_kit(url, backend, namespace)
    try:
        yield k
    finally:
        for gate in k.gates.values():
            gate.set()
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


async def test_a_queued_duplicate_returns_the_first_and_finishing_releases(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.send("a")
        again = await kit.work.send("a")
        other = await kit.work.send("b")  # other arguments: another key
        assert again.id == first.id
        assert other.id != first.id
        assert await kit.holder(kit.work, "a") == first.id
    async with start_worker(kit.app) as worker:
        assert await first.get(timeout=SOON) == "a"
        await settled(worker, 2)
        assert await kit.holder(kit.work, "a") is None, "finished: the lock is released"
        later = await kit.work.send("a")
        assert later.id != first.id
        assert await later.get(timeout=SOON) == "a"
    assert kit.ran == Counter({"a": 2, "b": 1})


async def test_a_hundred_concurrent_sends_run_once(kit: Kit) -> None:
    async with kit.app:
        results = await asyncio.gather(*(kit.work.send("same") for _ in range(100)))
        assert len({r.id for r in results}) == 1
    async with start_worker(kit.app) as worker:
        assert await results[0].get(timeout=SOON) == "same"
        await settled(worker, 1)
    assert kit.ran == Counter({"same": 1})


async def test_running_holds_the_lock_until_finished(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        first = await kit.hold.send("r")
        await until(lambda: kit.started == ["r"], "the task started")
        assert (await kit.hold.send("r")).id == first.id, "running: a duplicate is not sent"
        kit.gate("r").set()
        assert await first.get(timeout=SOON) == "r"
        await settled(worker, 1)
        assert await kit.holder(kit.hold, "r") is None


async def test_until_started_releases_when_the_task_starts(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        first = await kit.hold_started.send("s")
        await until(lambda: kit.started == ["s"], "the task started")
        await until_free(kit, kit.hold_started, "s")
        second = await kit.hold_started.send("s")
        assert second.id != first.id, "started: the next send is queued"
        kit.gate("s").set()
        assert await first.get(timeout=SOON) == "s"
        assert await second.get(timeout=SOON) == "s"
        await settled(worker, 2)
    assert kit.ran == Counter({"s": 2})


async def until_free(kit: Kit, task: Task[Any, Any], *args: Any) -> None:
    for _ in range(int(SOON / 0.02)):
        if await kit.holder(task, *args) is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the lock of {task.name}{args} was not released")


async def test_a_failure_releases_the_lock(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        first = await kit.boom.send("f")
        with pytest.raises(RuntimeError):
            await first.get(timeout=SOON)
        await settled(worker, 1)
        assert await kit.holder(kit.boom, "f") is None
        assert (await kit.boom.send("f")).id != first.id


async def test_a_retry_keeps_the_lock(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        first = await kit.flaky.send("y")
        await until(lambda: kit.ran["y"] == 2, "the retry ran")
        # between the attempts and during the retry the lock stays with the task
        assert await kit.holder(kit.flaky, "y") == first.id
        assert (await kit.flaky.send("y")).id == first.id
        kit.gate("y").set()
        assert await first.get(timeout=SOON) == "y"
        await settled(worker, 2)
        assert await kit.holder(kit.flaky, "y") is None


async def test_a_dead_lettered_task_releases_the_lock(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        first = await kit.refuse.send("d")
        await settled(worker, 1)
        assert kit.ran["d"] == 1
        assert await kit.holder(kit.refuse, "d") is None
        assert [d.message_id for d in await kit.app.broker.dead_letters("default")] == [first.id]
        await kit.app.dead_letters.purge()


async def test_revoking_a_queued_task_frees_its_key(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.send("v")
        await first.revoke()
        # at once for senders: a revoked holder is taken over
        second = await kit.work.send("v")
        assert second.id != first.id
        third = await kit.work.send("w")
        await third.revoke()
    async with start_worker(kit.app) as worker:
        assert await second.get(timeout=SOON) == "v"
        await settled(worker, 3)
        # and in the store once a worker skipped it
        assert await kit.holder(kit.work, "w") is None
    with pytest.raises(TaskRevoked):
        await first.get(timeout=1)
    assert kit.ran == Counter({"v": 1})


async def test_revoke_terminate_of_a_running_task_releases(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        first = await kit.hold.send("t")
        await until(lambda: kit.started == ["t"], "the task started")
        await first.revoke(terminate=True)
        await settled(worker, 1)
        assert await kit.holder(kit.hold, "t") is None
    assert kit.ran["t"] == 0


async def test_replace_revokes_the_queued_one(kit: Kit) -> None:
    async with kit.app:
        await kit.app.send_task("u.work", ["old"])  # not unique by name: its own message
        first = await kit.work.send("x")
        second = await kit.work.apply_async(["x"], on_conflict="replace")
        assert second.id != first.id
        assert await kit.holder(kit.work, "x") == second.id
    async with start_worker(kit.app) as worker:
        assert await second.get(timeout=SOON) == "x"
        await settled(worker, 3)
    with pytest.raises(TaskRevoked):
        await first.get(timeout=1)
    assert kit.ran == Counter({"x": 1, "old": 1})


async def test_ignore_returns_a_handle_that_says_not_sent(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.send("i")
        ignored = await kit.work.apply_async(["i"], on_conflict="ignore")
        assert ignored.id != first.id
        assert await ignored.state() == "REVOKED"
        assert await ignored.info() == {"not_sent": "duplicate", "existing_id": first.id}
        stats = await kit.app.broker.queue_stats(["default"])
        assert stats[0].ready == 1, "ignore sent nothing"


async def test_unique_for_bounds_the_lock(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.apply_async(["e"], unique_for=0.3)
        assert (await kit.work.send("e")).id == first.id
        await asyncio.sleep(0.5)
        assert await kit.holder(kit.work, "e") is None
        assert (await kit.work.send("e")).id != first.id


async def test_a_custom_key_by_argument_name(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.apply_async(["k1"], unique_key="key")
        same = await kit.work.apply_async(kwargs={"key": "k1"}, unique_key="key")
        assert same.id == first.id
        by_fn = await kit.work.apply_async(["k1-suffix"], unique_key=lambda key: key[:2])
        assert (await kit.work.apply_async(["k1-other"], unique_key=lambda key: key[:2])).id == (
            by_fn.id
        )


async def test_send_batch_takes_a_lock_per_call(kit: Kit) -> None:
    async with kit.app:
        results = await kit.work.send_batch([("b1",), ("b1",), kit.work.call("b2")])
        assert results[0].id == results[1].id != results[2].id


async def test_an_expired_message_releases_when_skipped(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.apply_async(["x"], expires=0.2)
        await asyncio.sleep(0.4)
        assert await kit.holder(kit.work, "x") == first.id  # no worker yet: still held
    async with start_worker(kit.app) as worker:
        await settled(worker, 1)
        assert await kit.holder(kit.work, "x") is None
    assert kit.ran["x"] == 0


async def test_an_unknown_task_is_dead_lettered_and_released(kit: Kit) -> None:
    async with start_worker(kit.app) as worker:
        sent = await kit.app.send_task("u.nowhere", ["z"], unique=True)
        await settled(worker, 1)
        backend = await kit.app.result_backend()
        key = unique_key("u.nowhere", None, ["z"], {})
        assert await backend.lock_store().get(key) is None
        assert [d.message_id for d in await kit.app.broker.dead_letters("default")] == [sent.id]
        await kit.app.dead_letters.purge()


async def test_fifty_concurrent_replacing_sends_leave_one_to_run(kit: Kit) -> None:
    async with kit.app:
        results = await asyncio.gather(
            *(kit.work.apply_async(["rr"], on_conflict="replace") for _ in range(50))
        )
        holder = await kit.holder(kit.work, "rr")
        assert holder in {r.id for r in results}
    async with start_worker(kit.app) as worker:
        assert await kit.app.AsyncResult(holder).get(timeout=SOON) == "rr"
        await settled(worker, 1)
        await until(lambda: worker.dispatcher.processed >= 50, "every sent copy was settled")
    assert kit.ran == Counter({"rr": 1}), "a replaced send ran"


async def test_a_producer_app_of_another_name_shares_the_locks(kit: Kit) -> None:
    conf = kit.app.conf
    if conf.broker_url.startswith("memory"):
        pytest.skip("memory:// is one app's: another App cannot reach it")
    web = App("web", broker=conf.broker_url, backend=conf.backend_url, key_prefix=conf.key_prefix)
    async with web:
        sent = await web.send_task("u.work", ["p"], unique=True)
        assert (await kit.work.send("p")).id == sent.id
        async with start_worker(kit.app) as worker:
            assert await web.AsyncResult(sent.id).get(timeout=SOON) == "p"
            await settled(worker, 1)
            assert await kit.holder(kit.work, "p") is None, "the worker released it"
    assert kit.ran == Counter({"p": 1})


async def test_a_resend_with_the_same_task_id_is_not_a_second_copy(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.apply_async(["same-id"], task_id="fixed-id")
        again = await kit.work.apply_async(["same-id"], task_id="fixed-id", on_conflict="replace")
        assert first.id == again.id == "fixed-id"
        stats = await kit.app.broker.queue_stats(["default"])
        assert stats[0].ready == 1


async def test_a_call_with_unique_false_is_sent_plainly(kit: Kit) -> None:
    async with kit.app:
        first = await kit.work.send("n")
        other = await kit.work.apply_async(["n"], unique=False)
        assert other.id != first.id
        assert await kit.holder(kit.work, "n") == first.id
