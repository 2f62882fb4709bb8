"""End-to-end through a real Worker (same code paths as `aiotask worker`), on memory and Redis.

The module's app is reconfigured per test for each broker; tests that build their own App
(routing, middleware) run on memory only.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.brokers import Outgoing
from aiotask.exceptions import (
    ConfigurationError,
    NotRegistered,
    ResultTimeout,
    SerializationError,
    TaskRevoked,
    TimeLimitExceeded,
)
from aiotask.protocol import Message, encode
from aiotask.testing import start_worker
from tests import leaks
from tests.integration import tasks_memory as t

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.context import TaskContext

app = t.app


@pytest.fixture(autouse=True, params=["memory", "redis", "sqlite", "amqp", "postgres", "sentinel"])
async def broker_kind(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[str]:
    """Point the shared app at a fresh broker/backend of this kind for one test."""
    if request.param == "memory":
        url = backend = "memory://"
    elif request.param == "amqp":  # RabbitMQ keeps no results: they go to Redis
        url, backend = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    else:
        url = backend = request.getfixturevalue(f"{request.param}_url")
    t.calls.clear()
    t.events.clear()
    t.gates.clear()  # events of an earlier test's loop
    original = app.conf
    app.conf = original.replace(broker_url=url, result_backend=backend, key_prefix=namespace)
    app._broker = app._backend = None
    try:
        yield request.param
    finally:
        await app.close()
        app.conf = original
        app._broker = app._backend = None


async def test_result_of_a_coroutine_task() -> None:
    async with start_worker(app):
        r = await t.add.send(2, 3)
        assert await r.get(timeout=5) == 5
        assert await r.state() == "SUCCESS"
        assert await r.successful()
        again = app.AsyncResult(r.id)
        assert await again.get(timeout=1) == 5


async def test_failure_raises_the_original_type_with_remote_traceback() -> None:
    async with start_worker(app):
        r = await t.fail.send("kaboom")
        with pytest.raises(t.Flaky, match="kaboom") as info:
            await r.get(timeout=5)
        assert "raise Flaky(message)" in info.value.remote_traceback  # type: ignore[attr-defined]
        assert await r.failed()
        assert isinstance(await app.AsyncResult(r.id).get(timeout=1, propagate=False), t.Flaky)


async def test_wrong_argument_count_is_a_type_error() -> None:
    async with start_worker(app):
        r = await t.add.apply_async(args=(1,))
        with pytest.raises(TypeError):
            await r.get(timeout=5)


async def test_unknown_task_fails_fast_and_is_dead_lettered() -> None:
    async with start_worker(app):
        r = await app.send_task("no.such.task", args=[1])
        with pytest.raises(NotRegistered, match=r"no\.such\.task"):
            await r.get(timeout=5)
        # The result is stored before the message is dead-lettered (settle order), so a fast
        # waiter can read the dead letters a moment before the nack lands.
        async with asyncio.timeout(5):
            while not any(
                d.message_id == r.id and "not registered" in d.reason
                for d in await app.broker.dead_letters("default")
            ):
                await asyncio.sleep(0.02)
        assert await (await t.add.send(1, 1)).get(timeout=5) == 2


async def test_garbage_is_dead_lettered_and_the_worker_keeps_going() -> None:
    async with start_worker(app):
        await app.broker.publish(
            [
                Outgoing("default", b"\x00\x01garbage", "junk-1"),
                Outgoing("default", b'{"v": 99, "id": "x", "task": "t"}', "junk-2"),
            ]
        )
        assert await (await t.add.send(2, 2)).get(timeout=5) == 4
        reasons: dict[str, str] = {}
        for _ in range(100):  # the dead-letter nack follows the batch's result store
            reasons = {d.message_id: d.reason for d in await app.broker.dead_letters("default")}
            if len(reasons) == 2:
                break
            await asyncio.sleep(0.02)
        assert "undecodable" in reasons["junk-1"]
        assert "version" in reasons["junk-2"]


async def test_unencodable_argument_is_refused_at_send_naming_it() -> None:
    await app.connect()
    try:
        with pytest.raises(SerializationError, match=r"kwargs\['y'\].*object"):
            await t.add.send(1, y=object())  # type: ignore[arg-type]
        assert await app.broker.purge("default") == 0
    finally:
        await app.close()


async def test_unencodable_result_is_a_failure() -> None:
    async with start_worker(app):
        with pytest.raises(SerializationError):
            await (await t.unencodable_result.send()).get(timeout=5)


async def test_bind_context_and_progress_state() -> None:
    async with start_worker(app):
        r = await t.introspect.send(3)
        for _ in range(50):
            if await r.state() == "PROGRESS":
                break
            await asyncio.sleep(0.01)
        assert await r.state() == "PROGRESS"
        assert await r.info() == {"done": 3}
        out = await r.get(timeout=5)
        assert out == {"id": r.id, "retries": 0, "args": [3], "root": r.id}


async def test_retry_succeeds_on_the_third_attempt() -> None:
    async with start_worker(app):
        r = await t.retry_until.send("k3", 3)
        assert await r.get(timeout=5) == 2
        assert t.calls["k3"] == 3


async def test_autoretry_gives_up_after_max_with_the_last_exception() -> None:
    async with start_worker(app):
        r = await t.always_flaky.send("kf")
        with pytest.raises(t.Flaky, match="call 3"):
            await r.get(timeout=5)
        assert t.calls["kf"] == 3


async def test_hooks_run_in_order() -> None:
    t.events.clear()
    async with start_worker(app):
        assert await (await t.hooked.send(None)).get(timeout=5) == "ok"
        with pytest.raises(t.Flaky):
            await (await t.hooked.send("bad")).get(timeout=5)
    assert t.events == [
        "success:ok",
        "after:SUCCESS",
        "retry",
        "after:RETRY",
        "failure:Flaky",
        "after:FAILURE",
    ]


async def test_time_limit_on_a_coroutine() -> None:
    async with start_worker(app):
        started = time.monotonic()
        with pytest.raises(TimeLimitExceeded):
            await (await t.too_slow.send()).get(timeout=5)
        assert time.monotonic() - started < 2
        assert await (await t.add.send(1, 2)).get(timeout=5) == 3


async def test_expired_message_is_not_run() -> None:
    async with start_worker(app):
        r = await t.sleeper.apply_async(args=(0, "expired-key"), countdown=0.3, expires=0.1)
        with pytest.raises(TaskRevoked):
            await r.get(timeout=5)
        assert "expired-key" not in t.calls


async def test_get_timeout() -> None:
    async with start_worker(app, queues=["elsewhere"]):
        r = await t.add.send(1, 1)
        with pytest.raises(ResultTimeout):
            await r.get(timeout=0.2)
    if app.conf.broker_url.startswith("amqp"):  # not one of the namespace's default queues
        prefix = app.conf.key_prefix
        await leaks.delete_queues(
            app.conf.broker_url,
            [f"{prefix}.elsewhere", f"{prefix}.elsewhere.dead", f"{prefix}.elsewhere.keys"],
        )


async def test_routing_by_option_and_by_settings() -> None:
    routed = App(
        "routed", broker="memory://", backend="memory://", task_routes={"routed.img.*": "images"}
    )

    @routed.task(name="routed.img.resize")
    async def resize() -> str:
        return "resized"

    @routed.task(name="routed.plain", queue="special")
    async def plain() -> str:
        return "plain"

    assert resize.message().queue == "images"
    assert plain.message().queue == "special"
    assert plain.message(queue="override").queue == "override"
    async with start_worker(routed, queues=["images", "special"]):
        assert await (await resize.send()).get(timeout=5) == "resized"
        assert await (await plain.send()).get(timeout=5) == "plain"


async def test_reject_requeue_and_dead_letter() -> None:
    async with start_worker(app):
        r = await t.rejecter.send(False)
        for _ in range(100):
            if any(d.message_id == r.id for d in await app.broker.dead_letters("default")):
                break
            await asyncio.sleep(0.01)
        dead = await app.broker.dead_letters("default")
        assert any(d.message_id == r.id and d.reason == "not today" for d in dead)


async def test_sync_task_runs_in_a_child_process() -> None:
    async with start_worker(app, processes=1):
        out = await (await t.pid_of_child.send(21)).get(timeout=30)
        assert out["x"] == 42
        assert out["pid"] != os.getpid()
        with pytest.raises(KeyError):
            await (await t.sync_fail.send()).get(timeout=30)


async def test_prefetch_bounds_what_the_worker_holds() -> None:
    async with start_worker(app, concurrency=2, prefetch=3) as worker:
        results = await t.sleeper.send_batch([(0.05,) for _ in range(12)])
        peak = 0
        while not all([await r.ready() for r in results]):
            peak = max(peak, len(worker.dispatcher.held))
            assert len(worker.dispatcher.running) <= 2
            await asyncio.sleep(0.01)
        assert 0 < peak <= 3


async def test_warm_shutdown_finishes_running_and_hands_back_the_rest() -> None:
    keys = [f"warm-{i}" for i in range(4)]
    async with start_worker(app, concurrency=2, prefetch=4) as worker:
        held = worker.dispatcher.held

        async def release_once_handed_back() -> None:
            await worker.shutdown.requested.wait()
            while len(held) > 2:  # the two unstarted go back first: they must not start now
                await asyncio.sleep(0.01)
            t.release(*keys)

        results = await t.hold.send_batch([(key,) for key in keys])
        while len(worker.dispatcher.running) < 2 or len(held) < 4:
            await asyncio.sleep(0.01)
        releaser = asyncio.create_task(release_once_handed_back())
    await releaser
    # the block exit was a warm shutdown: two ran to the end, two went back to the queue
    done = [await r.state() for r in results]
    assert done.count("SUCCESS") == 2
    async with start_worker(app):
        assert [await r.get(timeout=5) for r in results] == ["released"] * 4
    assert sum(t.calls.get(key, 0) for key in keys) == 4


async def test_cold_shutdown_abandons_running_tasks_for_redelivery() -> None:
    async with start_worker(app) as worker:
        r = await t.hold.send("cold-key")
        while not worker.dispatcher.running:
            await asyncio.sleep(0.01)
        worker.shutdown.request(cold=True)
    assert "cold-key" not in t.calls
    t.release("cold-key")  # its next run finishes at once
    async with start_worker(app):
        assert await r.get(timeout=5) == "released"
    assert t.calls["cold-key"] == 1


def test_definition_errors() -> None:
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task(name="e2e.fail")(t.add.fn)
    with pytest.raises(ConfigurationError, match="unknown task option"):
        app.task(retries=3)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="priority"):
        app.task(name="x.y", priority=12)(t.add.fn)


async def test_local_call_runs_here() -> None:
    assert await t.add(2, 3) == 5
    assert t.pid_of_child(1)["pid"] == os.getpid()


def test_message_is_what_send_publishes() -> None:
    m = t.add.message((1, 2), countdown=10, priority=3)
    assert isinstance(m, Message) and m.args == [1, 2] and m.priority == 3
    assert m.eta is not None and m.eta > time.time() + 9
    assert encode(m)


async def test_soft_time_limit_raises_inside_a_coroutine() -> None:
    async with start_worker(app):
        assert await (await t.soft_limited.send()).get(timeout=5) == "cleaned up"


async def test_rate_limit_holds_and_does_not_block_other_tasks(broker_kind: str) -> None:
    async with start_worker(app, concurrency=4):
        started = time.monotonic()
        results = await t.throttled.send_batch([(i,) for i in range(30)])
        other = await t.add.send(1, 1)
        if broker_kind != "amqp":
            # On RabbitMQ waiting messages count against basic.qos, so a task queued behind a
            # throttled backlog waits for it (documented: give throttled tasks their own queue).
            assert await other.get(timeout=2) == 2  # not stuck behind the throttled backlog
        await asyncio.sleep(3.0 - (time.monotonic() - started))
        # all read at once (one round trip), not one by one while more finish
        done = sum(await asyncio.gather(*(r.ready() for r in results)))
        assert 13 <= done <= 18  # 5/s over 3 s, first one immediate
        assert [await r.get(timeout=1) for r in results[:done]] == list(range(done))  # in order


async def test_middleware_wraps_send_and_execution() -> None:
    from aiotask.middleware import CallNext, Middleware

    seen: list[str] = []

    class Tracing(Middleware):
        async def startup(self, app: object) -> None:
            seen.append("startup")

        async def shutdown(self, app: object) -> None:
            seen.append("shutdown")

        async def before_send(self, message: Message) -> Message:
            return message.evolve(headers={**message.headers, "trace": "t-1"})

        async def around_task(self, ctx: TaskContext, call_next: CallNext) -> object:
            seen.append(f"before:{ctx.headers.get('trace')}")
            result = await call_next()
            seen.append("after")
            return result

    class Doubling(Middleware):
        async def around_task(self, ctx: TaskContext, call_next: CallNext) -> object:
            return 2 * await call_next()

    mapp = App("mw", broker="memory://", backend="memory://", middleware=[Tracing(), Doubling()])

    @mapp.task
    async def five() -> int:
        return 5

    async with start_worker(mapp):
        assert await (await five.send()).get(timeout=5) == 10
    assert seen == ["startup", "before:t-1", "after", "shutdown"]


async def test_priorities_order_a_backlog(broker_kind: str) -> None:
    t.order.clear()
    await app.connect()
    for p in [0, 9, 5, 0, 9, 5, 1, 8]:  # a backlog, published before any worker runs
        await t.note.apply_async(args=(p,), priority=p)
    await app.close()
    async with start_worker(app, concurrency=1, prefetch=1):
        while len(t.order) < 8:
            await asyncio.sleep(0.02)
    if broker_kind in {"redis", "sentinel"}:  # three bands: 7-9, 4-6, 0-3 (docs/redis.md)
        bands = [0 if p <= 3 else 1 if p <= 6 else 2 for p in t.order]
        assert bands == sorted(bands, reverse=True)
    else:
        assert t.order == sorted(t.order, reverse=True)
