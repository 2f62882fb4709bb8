"""`aiotask worker` over a private Redis Cluster: a worker process draining queues on two shards,
and a kill -9 of a shard's primary mid-run (a replica takes over, the worker resumes)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from aiotask import App
from aiotask._redis.cluster import startup_nodes
from tests import procs

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from tests.servers import PrivateRedisCluster


def _app(url: str, namespace: str) -> App:
    return App("proc", broker=url, key_prefix=namespace)


def _queues_on_two_shards(cluster: PrivateRedisCluster) -> tuple[str, str]:
    """Two queue names whose hash tags live on different primaries."""
    first = cluster.primary_of("{default}")
    for i in range(100):
        name = f"other{i}"
        if cluster.primary_of(f"{{{name}}}") is not first:
            return "default", name
    raise AssertionError("no queue name on another shard")


async def test_worker_process_drains_queues_on_two_shards(
    redis_cluster: PrivateRedisCluster, namespace: str, tmp_path: Path
) -> None:
    url = redis_cluster.url
    assert len(startup_nodes(url)) == 3
    q1, q2 = _queues_on_two_shards(redis_cluster)
    assert key_slot(q1.encode()) != key_slot(q2.encode())
    procs.write_tasks(tmp_path)
    env = procs.worker_env(tmp_path, url, AIOTASK_KEY_PREFIX=namespace)
    worker = procs.start_worker(tmp_path, env, "-Q", f"{q1},{q2}", "-c", "20")
    app = _app(url, namespace)
    try:
        async with app:
            results = [
                await app.send_task("proc.add", args=(i, 1), queue=q1 if i % 2 else q2)
                for i in range(200)
            ]
            got = await asyncio.gather(*(r.get(timeout=30) for r in results))
            assert got == [i + 1 for i in range(200)]
    finally:
        assert procs.stop(worker) == 0


async def _promoted(cluster: PrivateRedisCluster, victim: object) -> None:
    """Until another node serves the victim's slots and the cluster says ok again."""
    for _ in range(300):
        try:
            if cluster.primary_of("{default}") is not victim:
                break
        except RuntimeError:  # marked failed, no replica promoted yet
            pass
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("no replica was promoted within 60 s")
    await asyncio.to_thread(cluster.wait_ok, 60.0)


def _drain(proc: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Read the worker's stderr on a thread: an INFO line per task would fill the pipe and
    block the worker's event loop in a write."""
    stream = proc.stderr
    if stream is None:
        raise AssertionError("the worker's stderr is not a pipe")
    os.set_blocking(stream.fileno(), True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
    reader.start()
    return seen, reader


@pytest.mark.timeout(240)
async def test_kill_primary_mid_run_worker_resumes_after_failover(
    redis_cluster: PrivateRedisCluster, namespace: str, tmp_path: Path
) -> None:
    """kill -9 the primary that holds the queue (and some results) while a worker process
    drains it: its replica is promoted and the worker goes on. Replication is asynchronous, so
    sends acknowledged just before the kill may be gone (counted from the stored results and
    printed, see docs/redis-cluster.md); every send after the promotion runs."""
    url = redis_cluster.url
    procs.write_tasks(tmp_path)
    env = procs.worker_env(tmp_path, url, AIOTASK_KEY_PREFIX=namespace)
    worker = procs.start_worker(tmp_path, env, "-c", "20")
    log, reader = _drain(worker)
    app = _app(url, namespace)
    try:
        async with app:
            before = [await app.send_task("proc.add", args=(i, 1)) for i in range(300)]
            victim = redis_cluster.primary_of("{default}")
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)  # the PID we started
            victim.proc.wait()
            victim.proc = None
            await _promoted(redis_cluster, victim)
            after = [await app.send_task("proc.add", args=(i, 2)) for i in range(100)]
            got = await asyncio.gather(*(r.get(timeout=60) for r in after))
            assert got == [i + 2 for i in range(100)], "".join(log[-50:])  # the worker resumed
            ids, backend = [r.id for r in before], app.backend
            assert backend is not None
            for _ in range(20):  # results of the tasks sent before the kill, read directly
                ok = sum(r is not None for r in await backend.get_many(ids))
                if ok == len(ids):
                    break
                await asyncio.sleep(1)
            print(f"sent before the kill: 300, finished: {ok}, lost: {300 - ok}")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        reader.join(10)
        if worker.stderr is not None:
            worker.stderr.close()
        assert code == 0, "".join(log[-50:])
