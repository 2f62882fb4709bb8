"""A real worker process on a private Sentinel set while its primary is killed with -9.

The producer sends with redis_wait_replicas=1: a send() that returned is on the replica too,
so the promoted replica has it. Sends that raise (the primary gone, or no replica left to
confirm them) are not acknowledged and are not counted. Executions are counted outside
aiotask (a file per task, written by the task itself).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.exceptions import BrokerConnectionError
from tests.procs import StderrTail, lines, start_worker, stop, worker_env, write_tasks
from tests.sentinel_server import PrivateSentinelSet

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    # A failover run like the Redis Cluster ones: in `make cluster`, not in `make test`. In two
    # loaded full-suite runs it failed BEFORE the failover (fewer than 20 tasks done in 30 s with
    # WAIT on); the cause is not found yet (docs/scaling.md).
    pytest.mark.skipif(
        os.environ.get("AIOTASK_CLUSTER_TESTS") != "full",
        reason="Redis Sentinel failover: run `make cluster`",
    ),
]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[PrivateSentinelSet]:
    if not PrivateSentinelSet.available():
        pytest.skip("redis-server is not installed")
    directory = tmp_path / "sentinel"
    directory.mkdir()
    s = PrivateSentinelSet(directory)
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_worker_resumes_after_failover_and_no_acknowledged_send_is_lost(
    tmp_path: Path, servers: PrivateSentinelSet
) -> None:
    env = worker_env(write_tasks(tmp_path), servers.url, AIOTASK_VISIBILITY_TIMEOUT="5")
    worker = start_worker(tmp_path, env, "-c", "8")
    drain = StderrTail(worker)
    acked: list[str] = []
    refused: list[str] = []
    reasons: list[str] = []
    try:
        async with App("proc", broker=servers.url, redis_wait_replicas=1) as app:

            async def produce(prefix: str, seconds: float, at_least: int = 0) -> None:
                """Send for SECONDS, and on until AT_LEAST sends of this prefix were acked."""
                end = time.monotonic() + seconds
                i = 0
                while time.monotonic() < end or (
                    sum(k.startswith(prefix) for k in acked) < at_least
                    and time.monotonic() < end + 60
                ):
                    key = f"{prefix}{i}"
                    i += 1
                    try:
                        async with asyncio.timeout(10):
                            await app.send_task("proc.slow", args=[key, 0.02])
                    except (BrokerConnectionError, TimeoutError) as exc:
                        refused.append(key)
                        reasons.append(repr(exc))
                        await asyncio.sleep(0.1)
                    else:
                        acked.append(key)
                        await asyncio.sleep(0.005)

            # before: the worker drains as usual. At least 21 acked sends, not "2 s of sends": on a
            # loaded machine 2 s of WAIT-confirmed sends could be fewer than 21, and the check
            # below then waited for tasks that were never sent (how this test used to fail).
            await produce("a", 2.0, at_least=21)
            before = [k for k in acked if k.startswith("a")]
            assert await _wait_for(lambda: set(before) <= set(lines(tmp_path, "finished")), 60), (
                f"{len(before)} acked, {len(lines(tmp_path, 'finished'))} finished, refused "
                f"{len(refused)}: {reasons[-3:]}\n{drain.text()}"
            )
            producer = asyncio.create_task(produce("b", 6.0))  # during the failover
            await asyncio.sleep(0.5)
            old = servers.kill_primary()
            new = await asyncio.to_thread(servers.wait_failover, old)
            await producer
            assert refused, "no replica is left to confirm sends: they must fail, not pass"
            servers.primary.start()  # the old primary rejoins (the sentinels make it a replica)
            assert await _wait_for(lambda: servers.replica_count(new) >= 1, 60)
            await produce("c", 2.0)  # after: confirmed again
            assert any(k.startswith("c") for k in acked), reasons[-3:]
            done = await _wait_for(lambda: set(acked) <= set(lines(tmp_path, "finished")), 90)
            missing = set(acked) - set(lines(tmp_path, "finished"))
            assert done, f"{len(missing)} acked sends never ran: {sorted(missing)[:10]}\n" + (
                drain.text()
            )
    finally:
        code = stop(worker)
        drain.thread.join(5)
    assert code == 0, drain.text()
    assert any(k.startswith("b") for k in acked)  # sends around the kill were acknowledged
