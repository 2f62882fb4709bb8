"""A real worker process while its (private) RabbitMQ node is killed with -9 and restarted.

Issue 11 item 1: the consume connection came back before the publish one, receive()
republished a redelivered message on the still-closed publish channel, and the worker exited
(one run in two). A proxy holds back the worker's publish connection after the restart, so the
consume side always wins that race here. Executions are counted outside aiotask (a file per
task, written by the task itself).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests.procs import StderrTail, lines, start_worker, stop, worker_env, write_tasks
from tests.rabbit_server import FaultProxy, PrivateRabbit

if TYPE_CHECKING:
    import subprocess
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.amqp, pytest.mark.slow, pytest.mark.timeout(240)]

BEFORE = 1200  # published before the crash
DURING = 300  # published by a producer while the node is down
HOLD_PUBLISH = 4.0  # seconds the worker's publish connection is held back after the restart


@pytest.fixture
async def proxy(node: PrivateRabbit) -> AsyncIterator[FaultProxy]:
    # the worker's App is named "proc": its connections are "aiotask proc publish|consume"
    p = FaultProxy(node.port, marker=b"aiotask proc publish")
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def _send(app: App, keys: list[str]) -> None:
    await asyncio.gather(*(app.send_task("proc.slow", args=[k, 0.01]) for k in keys))


async def _until(
    worker: subprocess.Popen[str], log: StderrTail, directory: Path, want: set[str], timeout: float
) -> set[str]:
    """Wait until every key in `want` has finished; fail at once if the worker exits."""
    deadline = time.monotonic() + timeout
    while True:
        done = set(lines(directory, "finished"))
        if want <= done:
            return done
        code = worker.poll()
        if code is not None:
            pytest.fail(f"worker exited with {code}, {len(want - done)} tasks left:\n{log.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{len(want - done)} of {len(want)} tasks never ran:\n{log.text()}")
        await asyncio.sleep(0.1)


async def test_worker_survives_a_rabbitmq_crash_and_restart(
    tmp_path: Path, node: PrivateRabbit, proxy: FaultProxy, namespace: str
) -> None:
    via_proxy = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    env = worker_env(write_tasks(tmp_path), via_proxy, AIOTASK_KEY_PREFIX=namespace)
    before = [f"b{i}" for i in range(BEFORE)]
    during = [f"d{i}" for i in range(DURING)]
    async with App("producer", broker=node.url, key_prefix=namespace, result_backend=None) as app:
        await _send(app, before)
    # (in a thread: the proxy runs on this event loop)
    worker = await asyncio.to_thread(start_worker, tmp_path, env, "-c", "8")
    log = StderrTail(worker)
    try:
        while len(lines(tmp_path, "finished")) < BEFORE // 6:
            assert worker.poll() is None
            await asyncio.sleep(0.05)
        async with App(
            "producer", broker=node.url, key_prefix=namespace, result_backend=None
        ) as app:
            await app.connect()
            proxy.hold = HOLD_PUBLISH
            node.kill()  # kill -9, with unacked deliveries in the worker's hands
            # a producer publishing during the outage waits for the node instead of failing
            sending = asyncio.create_task(_send(app, during))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(node.start)  # same env: same node, same durable queues
            await _until(worker, log, tmp_path, set(before), timeout=90)
            await sending
        assert proxy.held >= 1  # the publish side really came back last
        finished = await _until(worker, log, tmp_path, set(before + during), timeout=60)
        assert worker.poll() is None
        assert len(finished) >= BEFORE + DURING
    finally:
        code = await asyncio.to_thread(stop, worker)
    assert code == 0
