"""A real worker process drains 10,000 tasks from a quorum queue on a private 3-node RabbitMQ
cluster while the node it is connected to, which also leads the queue, is killed with -9.

Everything is published (and confirmed) through node 1, so node 1 leads the quorum queue; the
worker's URL lists node 1 first, so both its connections are there too. After the kill the
other two nodes elect a new leader, the worker reconnects to the next node and consumes on.
Sends made around the kill count only when confirmed. Every confirmed task must finish and
have its result (in the shared Redis, under this test's prefix). `make cluster` runs this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.exceptions import BrokerConnectionError
from tests.procs import lines, start_worker, stop, worker_env, write_tasks
from tests.rabbit_cluster import PrivateRabbitCluster
from tests.rabbit_server import need_rabbitmq_server

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TASKS = 10_000


@pytest.fixture
def rabbit_cluster(tmp_path: Path) -> Iterator[PrivateRabbitCluster]:
    need_rabbitmq_server()
    cluster = PrivateRabbitCluster(tmp_path / "rabbit")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class _Drain:
    """Reads the worker's stderr all along (a failover logs enough to fill a pipe)."""

    def __init__(self, worker: subprocess.Popen[str]) -> None:
        assert worker.stderr is not None
        self.stream = worker.stderr
        os.set_blocking(self.stream.fileno(), True)
        self.lines: deque[str] = deque(maxlen=60)
        self.seen_next_node = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self.stream:
                self.seen_next_node |= "connecting to the next node" in line
                self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


async def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return predicate()


async def test_kill_9_of_the_workers_node_and_queue_leader_loses_no_confirmed_task(
    tmp_path: Path, rabbit_cluster: PrivateRabbitCluster, redis_url: str, namespace: str
) -> None:
    cluster = rabbit_cluster
    first, second = cluster.nodes[0], cluster.nodes[1]
    settings = {"key_prefix": namespace, "rabbitmq_queue_type": "quorum"}
    env = worker_env(
        write_tasks(tmp_path),
        cluster.url,
        AIOTASK_RESULT_BACKEND=redis_url,
        AIOTASK_KEY_PREFIX=namespace,
        AIOTASK_RABBITMQ_QUEUE_TYPE="quorum",
    )
    keys: dict[str, str] = {}  # task id -> key, confirmed sends only
    refused = 0
    async with App("proc", broker=first.url, backend=redis_url, **settings) as app:  # type: ignore[arg-type]

        async def send(key: str) -> None:
            result = await app.send_task("proc.slow", args=[key, 0.0])
            keys[result.id] = key

        for start in range(0, TASKS, 500):
            await asyncio.gather(*(send(f"k{i}") for i in range(start, start + 500)))
        queue = f"{namespace}.default"
        assert cluster.leader(queue, second) == first.name  # node 1 leads the queue

    worker = start_worker(tmp_path, env, "-c", "50")
    drain = _Drain(worker)
    try:
        async with App("proc", broker=cluster.url, backend=redis_url, **settings) as app:  # type: ignore[arg-type]

            async def produce(seconds: float) -> None:
                nonlocal refused
                end, i = time.monotonic() + seconds, 0
                while time.monotonic() < end:
                    key, i = f"x{i}", i + 1
                    try:
                        async with asyncio.timeout(20):
                            result = await app.send_task("proc.slow", args=[key, 0.0])
                    except (BrokerConnectionError, TimeoutError):
                        refused += 1  # not confirmed: may or may not run, not counted
                        await asyncio.sleep(0.1)
                    else:
                        keys[result.id] = key
                        await asyncio.sleep(0.01)

            assert await _wait_for(lambda: len(lines(tmp_path, "finished")) >= 1500, 120), (
                drain.text()
            )
            producer = asyncio.create_task(produce(10.0))  # through node 1 as well
            await asyncio.sleep(1.0)
            done_before = len(set(lines(tmp_path, "finished")))
            first.kill()  # the worker's node and the queue's leader
            await producer
            assert done_before < TASKS, "the worker finished before the kill: nothing was tested"
            assert worker.poll() is None, drain.text()
            want = set(keys.values())
            finished = await _wait_for(lambda: want <= set(lines(tmp_path, "finished")), 400)
            missing = want - set(lines(tmp_path, "finished"))
            assert finished, f"{len(missing)} confirmed tasks never ran: {sorted(missing)[:10]}"
            new_leader = cluster.leader(queue, second)
            assert new_leader in {n.name for n in cluster.nodes[1:]}
            ids = list(keys)
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                got = await asyncio.gather(*(app.AsyncResult(i).get(timeout=60) for i in chunk))
                assert got == [keys[i] for i in chunk]  # each task's result is there
            dead = await app.dead_letters.list(queue="default")
            assert dead == [], dead[:3]
    finally:
        code = stop(worker, timeout=60)
        drain.thread.join(5)
    assert code == 0, drain.text()
    assert drain.seen_next_node, "the worker never moved to another node:\n" + drain.text()
    assert len(keys) > TASKS  # sends around the kill were confirmed too
    print(f"confirmed {len(keys)}, refused {refused}, ran before the kill {done_before}")
