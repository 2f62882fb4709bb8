"""A task that hangs past the shutdown grace is abandoned counted: dead-lettered after
max_deliveries across restarts, instead of running forever (issue 11 item 2).

The worker hands abandoned deliveries back with `nack(requeue=True, counted=True)`; each broker
must honour `counted` (and dead-letter a message that is handed back exhausted) for this to pass.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.cli.test_worker_process import env_for, producer
from tests.procs import TASKS_MODULE, lines, start_worker, stop

if TYPE_CHECKING:
    from pathlib import Path

MAX_DELIVERIES = 2


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hang.db"
    url: str = request.getfixturevalue(f"{request.param}_url")
    if request.param == "amqp":
        request.getfixturevalue("redis_url")  # results live in Redis
    return url


async def wait_for_start(directory: Path, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(lines(directory, "started")) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(lines(directory, "started")) == count


async def test_a_hanging_task_is_dead_lettered_after_max_deliveries(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace, AIOTASK_MAX_DELIVERIES=str(MAX_DELIVERIES))
    module = tmp_path / "proc_tasks.py"  # (env_for wrote it) a short shutdown grace
    module.write_text(TASKS_MODULE.replace("shutdown_grace=20.0", "shutdown_grace=0.3"))
    async with producer(broker_url, namespace) as app:
        hung = await app.send_task("proc.slow", args=["hang", 3600])
        for run in range(1, MAX_DELIVERIES + 1):  # a supervisor restarting the worker
            proc = start_worker(tmp_path, env, "-c", "1", "--prefetch", "1")
            await wait_for_start(tmp_path, run)
            assert stop(proc, signal.SIGTERM) == 1  # grace over: the running task abandoned
        last = start_worker(tmp_path, env, "-c", "2", "--prefetch", "2")
        try:
            ok = await app.send_task("proc.add", args=[1, 2])
            assert await app.AsyncResult(ok.id).get(timeout=15) == 3
            await asyncio.sleep(0.5)  # a third delivery of the hanging task would start by now
        finally:
            code = stop(last)
        assert lines(tmp_path, "started") == ["hang"] * MAX_DELIVERIES  # never again
        assert code == 0
        dead = await app.broker.dead_letters("default")
        assert [d.message_id for d in dead] == [hung.id]
