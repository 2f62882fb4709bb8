"""The chord window: a worker dies right after the report that completes a chord.

The crash is injected at that exact point (AIOTASK_TEST_CRASH_AT=chord-fired: the backend has
recorded the group as fired, nothing is published yet). Another worker then takes the
redelivered header task, derives the body again and publishes it: the body runs exactly once.
"""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App
from aiotask.canvas import chord, signature
from aiotask.testing import start_worker
from aiotask.worker import Worker
from aiotask.worker.settle import CRASH_AT_ENV, CRASH_EXIT_CODE
from tests.procs import lines, stop, worker_env
from tests.procs import start_worker as start_process

if TYPE_CHECKING:
    from pathlib import Path

    from aiotask.brokers.base import Broker

HEADER = 5
TASKS = textwrap.dedent(
    """
    import os
    from aiotask import App

    app = App("crash")

    def _mark(kind: str, key: str) -> None:
        with open(os.path.join(os.environ["TEST_LOG_DIR"], kind), "a") as f:
            f.write(key + "\\n")

    @app.task(name="crash.add")
    async def add(x: int, y: int) -> int:
        _mark("header", str(x))
        return x + y

    @app.task(name="crash.tsum")
    async def tsum(values: list[int]) -> int:
        _mark("body", str(sum(values)))
        return sum(values)
    """
)


async def queue_is_empty(broker: Broker, queue: str = "default") -> bool:
    """Nothing left to deliver (a duplicate body would be here if it was not run)."""
    try:
        async with asyncio.timeout(1.5):
            got = await broker.receive([queue], 10)
    except TimeoutError:
        return True
    await broker.nack(got, requeue=True)
    return not got


def send_chord(app: App) -> Any:
    header = [signature("crash.add", (i, i), app=app) for i in range(HEADER)]
    return chord(header, signature("crash.tsum", app=app)).send()


@pytest.mark.parametrize("point", ["chord-fired", "chord-published"])
async def test_memory_worker_dies_after_the_fire_decision(
    point: str, monkeypatch: pytest.MonkeyPatch, namespace: str
) -> None:
    """chord-fired: nothing published yet. chord-published: the body is out but the chord is
    not marked sent, so the redelivered header publishes a copy, which the worker skips."""
    app = App(f"crash-{namespace}", broker="memory://", backend="memory://")
    bodies: list[int] = []

    @app.task(name="crash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="crash.tsum")
    async def tsum(values: list[int]) -> int:
        bodies.append(sum(values))
        return sum(values)

    async with app:
        result = await send_chord(app)
        monkeypatch.setenv(CRASH_AT_ENV, f"{point}:raise")
        first = Worker(app, concurrency=1, prefetch=1)
        assert await asyncio.wait_for(first.run(), 20) == 1  # died; its delivery handed back
        assert bodies == []
        monkeypatch.delenv(CRASH_AT_ENV)
        # one at a time: the body (queued first) finishes before the header copy comes back
        async with start_worker(app, concurrency=1, prefetch=1) as second:
            assert await result.get(timeout=20) == sum(2 * i for i in range(HEADER))
            async with asyncio.timeout(20):  # the redelivered header, the body (and its copy)
                while second.dispatcher.processed < (2 if point == "chord-fired" else 3):
                    await asyncio.sleep(0.02)
        assert await queue_is_empty(app.broker)
        assert bodies == [sum(2 * i for i in range(HEADER))]


@pytest.fixture(params=["sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/crash.db"
    url: str = request.getfixturevalue("redis_url")
    return url


async def _cleanup_redis(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


async def test_worker_process_killed_after_the_fire_decision(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    (tmp_path / "proc_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    settings = {"AIOTASK_KEY_PREFIX": namespace, "AIOTASK_VISIBILITY_TIMEOUT": "2"}
    env = worker_env(tmp_path, broker_url, **settings)
    app = App("crash", broker=broker_url, key_prefix=namespace, visibility_timeout=2)
    try:
        async with app:
            result = await send_chord(app)
            # one delivery at a time: the crash leaves exactly the completing header unsettled
            crashing = start_process(
                tmp_path, {**env, CRASH_AT_ENV: "chord-fired"}, "-c", "1", "--prefetch", "1"
            )
            try:
                code = await asyncio.to_thread(crashing.wait, 30)
            except subprocess.TimeoutExpired:
                crashing.kill()
                raise
            finally:
                if crashing.stderr is not None:
                    crashing.stderr.close()
            assert code == CRASH_EXIT_CODE
            assert lines(tmp_path, "body") == []
            assert sorted(lines(tmp_path, "header")) == [str(i) for i in range(HEADER)]
            second = start_process(tmp_path, env, "-c", "4")
            try:
                assert await result.get(timeout=30) == sum(2 * i for i in range(HEADER))
            finally:
                assert stop(second) == 0  # warm: whatever it took is settled first
            assert await queue_is_empty(app.broker)
        assert lines(tmp_path, "body") == [str(sum(2 * i for i in range(HEADER)))]
        assert len(lines(tmp_path, "header")) == HEADER + 1  # the redelivered one ran again
    finally:
        if broker_url.startswith("redis"):
            await _cleanup_redis(broker_url, namespace)
