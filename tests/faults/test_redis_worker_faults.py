"""A real worker process while its (private) Redis server dies, restarts, or stays down."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests.conftest import REQUIRE_SERVICES
from tests.procs import start_worker, stop, worker_env, write_tasks
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    data = tmp_path / "redis"
    data.mkdir()
    server = PrivateRedis(data, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_worker_resumes_after_redis_restarts(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(write_tasks(tmp_path), redis_server.url, AIOTASK_KEY_PREFIX=namespace)
    worker = start_worker(tmp_path, env, "-c", "4")
    try:
        async with App("proc", broker=redis_server.url, key_prefix=namespace) as app:
            first = await app.send_task("proc.add", args=[1, 1])
            assert await app.AsyncResult(first.id).get(timeout=10) == 2
            redis_server.kill()  # kill -9 the server under the running worker
            await asyncio.sleep(0.5)
            redis_server.start()  # same port, same data directory (append-only file)
            second = await app.send_task("proc.add", args=[2, 2])
            assert await app.AsyncResult(second.id).get(timeout=20) == 4
        assert worker.poll() is None  # it never died
    finally:
        assert stop(worker) == 0


def test_worker_exits_non_zero_when_redis_stays_down(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(
        write_tasks(tmp_path),
        redis_server.url,
        AIOTASK_KEY_PREFIX=namespace,
        AIOTASK_BROKER_UNREACHABLE_TIMEOUT="2",
    )
    worker = start_worker(tmp_path, env, "-c", "4")
    redis_server.kill()
    started = time.monotonic()
    try:
        code = worker.wait(timeout=30)  # supervisor would restart it: never "connected but idle"
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    finally:
        if worker.stderr is not None:
            worker.stderr.close()
    assert code != 0
    assert time.monotonic() - started < 25
