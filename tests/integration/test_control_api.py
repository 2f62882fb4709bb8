"""app.control against in-process workers (memory and SQLite): registry, inspect, control."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson
import pytest

from aiotask import App
from aiotask.exceptions import ConfigurationError
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/c.db"
    the_app = App("ctl", broker=url, worker_heartbeat_interval=0.2, worker_lost_after=1.0)
    gate = asyncio.Event()

    @the_app.task(name="ctl.wait")
    async def wait(key: str) -> str:
        await gate.wait()
        return key

    @the_app.task(name="ctl.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @the_app.task(name="ctl.limited", rate_limit="1/h")
    async def limited() -> None:
        return None

    @the_app.task(name="ctl.boom")
    async def boom() -> None:
        raise ValueError("boom")

    the_app.gate = gate  # type: ignore[attr-defined]
    async with the_app:
        yield the_app


async def until(check: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_registry_ping_and_clean_removal(app: App) -> None:
    async with start_worker(app, name="w1", concurrency=2) as worker:
        workers = await app.control.workers()
        assert [w.name for w in workers] == ["w1"]
        info = workers[0]
        assert info.queues == ("default",) and info.concurrency == 2
        assert info.state(info.beat_at) == "online"
        assert await app.control.ping(timeout=5) == {"w1": "pong"}
        await app.send_task("ctl.add", args=[1, 2])
        await app.send_task("ctl.boom")
        await until(lambda: _counted(app, worker.name))
    assert await app.control.workers() == []  # stopped cleanly: gone, not lost


async def _counted(app: App, name: str) -> bool:
    info = {w.name: w for w in await app.control.workers()}[name]
    return info.done >= 2 and info.failed >= 1


async def test_inspect_active_reserved_registered_stats_conf(app: App) -> None:
    async with start_worker(app, name="w1", concurrency=1, prefetch=3):
        first = await app.send_task("ctl.wait", args=["a"])
        second = await app.send_task("ctl.wait", args=["b"])
        await until(lambda: _has(app, "active", first.id))
        await until(lambda: _has(app, "reserved", second.id))
        active = (await app.control.inspect("active", timeout=5))["w1"]
        assert active[0]["name"] == "ctl.wait" and active[0]["args"] == ["a"]
        registered = (await app.control.inspect("registered", timeout=5))["w1"]
        assert {"ctl.wait", "ctl.add"} <= set(registered)
        stats = (await app.control.inspect("stats", timeout=5))["w1"]
        assert stats["active"] == 1 and stats["reserved"] == 1 and stats["prefetch"] == 3
        conf = (await app.control.inspect("conf", timeout=5))["w1"]
        assert conf["concurrency"] == 1 and conf["worker_lost_after"] == 1.0
        assert (await app.control.inspect("scheduled", timeout=5))["w1"] == []
        await app.control.revoke(second.id)
        await until(lambda: _has(app, "revoked", second.id))
        app.gate.set()  # type: ignore[attr-defined]
        assert await first.get(timeout=10) == "a"


async def _has(app: App, what: str, task_id: str) -> bool:
    answer = (await app.control.inspect(what, timeout=2)).get("w1") or []
    return any((e if isinstance(e, str) else e["id"]) == task_id for e in answer)


async def test_control_commands_change_the_worker(app: App) -> None:
    async with start_worker(app, name="w1", concurrency=2) as worker:
        replies = await app.control.rate_limit("ctl.add", "5/s", timeout=5)
        assert replies == {"w1": {"ok": "rate limit of ctl.add set to 5/s"}}
        assert app.tasks["ctl.add"].options.rate_limit == 5.0
        replies = await app.control.rate_limit("ctl.nope", "5/s", timeout=5)
        assert "not registered" in replies["w1"]["error"]
        await app.control.rate_limit("ctl.add", 0, timeout=5)
        assert app.tasks["ctl.add"].options.rate_limit is None

        assert (await app.control.pool_grow(3, timeout=5))["w1"] == {"ok": "concurrency 2 -> 5"}
        assert worker.dispatcher.concurrency == 5 and worker.dispatcher.prefetch == 5
        await app.control.pool_shrink(10, timeout=5)
        assert worker.dispatcher.concurrency == 1

        await app.control.add_consumer("extra", timeout=5)
        assert worker.queues == ["default", "extra"]
        r = await app.send_task("ctl.add", args=[2, 2], queue="extra")
        assert await r.get(timeout=10) == 4  # the restarted consumer reads the new queue
        cancelled = await app.control.cancel_consumer("extra", timeout=5)
        assert cancelled == {"w1": {"ok": "no longer consuming extra"}}
        only = await app.control.cancel_consumer("default", timeout=5)
        assert "only queue" in only["w1"]["error"]

        assert (await app.control.shutdown(timeout=5)) == {"w1": {"ok": "shutting down (warm)"}}
        async with asyncio.timeout(10):
            await worker.shutdown.requested.wait()


async def test_bad_input_and_malformed_messages(app: App) -> None:
    async with start_worker(app, name="w1"):
        with pytest.raises(ConfigurationError, match="unknown worker"):
            await app.control.inspect("ping", destination=["nobody"])
        with pytest.raises(ConfigurationError, match="unknown inspect command"):
            await app.control.inspect("everything")
        with pytest.raises(ConfigurationError, match="bad rate limit"):
            await app.control.rate_limit("ctl.add", "fast")
        with pytest.raises(ConfigurationError, match="positive integer"):
            await app.control.pool_grow(0)
        backend = await app.result_backend()
        for junk in (
            b"\xff not json",
            b"[1, 2]",
            b'{"op": "revoke", "ids": 7}',
            b'{"op": "inspect"}',
            b'{"op": "inspect", "cmd": "ping", "reply_to": "r", "to": "w1"}',
            b'{"op": "control", "cmd": "nope", "reply_to": "r-nope"}',
            b'{"op": "control", "cmd": "pool_grow", "args": {"n": "x"}, "reply_to": "r-n"}',
        ):
            await backend.broadcast(junk)
        unknown = orjson.loads((await backend.replies("r-nope", 5))[0])
        assert unknown == {"worker": "w1", "error": "unknown command 'nope'"}
        bad_n = orjson.loads((await backend.replies("r-n", 5))[0])
        assert "bad count" in bad_n["error"]
        assert await app.control.ping(timeout=5) == {"w1": "pong"}  # still obeying


async def test_destination_and_no_reply(app: App) -> None:
    # memory:// lives in its App; a SQLite file can be shared by a second App (a worker closes
    # its App when it stops, so two workers on SQLite need two)
    other = app if app.conf.broker_url == "memory://" else App("ctl", broker=app.conf.broker_url)
    async with start_worker(app, name="w1"), start_worker(other, name="w2"):
        assert await app.control.ping(timeout=5) == {"w1": "pong", "w2": "pong"}
        assert await app.control.ping(destination=["w2"], timeout=5) == {"w2": "pong"}
    # both stopped: nothing answers, the call returns empty after its timeout
    assert await app.control.ping(timeout=0.3) == {}


async def test_inspect_scheduled_shows_rate_limited_messages(app: App) -> None:
    async with start_worker(app, name="w1"):
        first = await app.send_task("ctl.limited")
        second = await app.send_task("ctl.limited")  # 1/h: waits for its token, held here
        await first.get(timeout=10)
        await until(lambda: _has(app, "scheduled", second.id))
        [held] = (await app.control.inspect("scheduled", timeout=5))["w1"]
        assert held["name"] == "ctl.limited" and held["starts_at"] > time.time() + 3000


async def test_no_result_backend_is_a_clear_error() -> None:
    app = App("nobackend", broker="memory://", backend=None)
    with pytest.raises(ConfigurationError, match="no result backend"):
        await app.control.workers()
    with pytest.raises(ConfigurationError, match="no result backend"):
        await app.control.ping()


async def test_schedule_changes_on_the_channel_are_not_malformed_for_workers(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Beats' reload notices share the control channel: a worker skips them without a
    warning (each `schedule add` used to log 'malformed control message')."""
    async with start_worker(app, name="w1"):
        with caplog.at_level("WARNING", logger="aiotask.worker.control"):
            await app.schedules.add("dyn", task="ctl.add", every=3600, args=[1, 2])
            await app.schedules.remove("dyn")
            await (await app.result_backend()).broadcast(b'{"op": "nonsense"}')
            assert await app.control.ping(timeout=5) == {"w1": "pong"}  # all delivered by now
    warnings = [r.getMessage() for r in caplog.records if r.name == "aiotask.worker.control"]
    assert len(warnings) == 1 and "nonsense" in warnings[0], warnings
