"""Fairness keys on Redis through faults, on a private redis-server (append-only, fsync always):
a kill -9 and restart of the server keeps every keyed message and the round-robin between keys,
and a worker killed -9 while it holds a batch of keyed messages (prefetched, some running) gets
them redelivered to another worker: each runs again only if the dead worker had it."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests.procs import StderrTail, lines, start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.servers import PrivateRedis

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

FAST_TAKEOVER = {"AIOTASK_WORKER_LOST_AFTER": "3", "AIOTASK_WORKER_HEARTBEAT_INTERVAL": "0.5"}


def _tenant(key: str, *_: object) -> str:
    """proc.slow's key is `tenant-i`: the tenant is the fairness key."""
    return key.partition("-")[0]


async def _until(
    predicate: Callable[[], bool], what: str, tails: list[StderrTail], timeout: float = 60
) -> None:
    """Until `predicate()`; else fail with the workers' last log lines."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            logs = "\n".join(t.text() for t in tails)
            raise AssertionError(f"{what}: not in {timeout}s\n{logs}")
        await asyncio.sleep(0.05)


async def _send(app: App, tenant: str, n: int, seconds: float) -> list[str]:
    keys = [f"{tenant}-{i}" for i in range(n)]
    for key in keys:
        await app.send_task("proc.slow", [key, seconds], fairness_key=_tenant)
    return keys


async def test_keyed_messages_and_their_turns_survive_a_redis_kill_and_restart(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    url = redis_server.url
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace, **FAST_TAKEOVER)
    async with App("proc", broker=url, key_prefix=namespace) as app:
        a_keys = await _send(app, "A", 200, 0.0)
        b_keys = await _send(app, "B", 10, 0.0)
    redis_server.kill()  # kill -9: what survives is what the append-only file has
    redis_server.start()
    worker = start_worker(tmp_path, env, "-c", "4")
    tails = [StderrTail(worker)]  # read all along: a full pipe would block the worker
    try:
        async with App("proc", broker=url, key_prefix=namespace) as app:
            await _until(lambda: set(b_keys) <= set(lines(tmp_path, "finished")), "B done", tails)
            done = lines(tmp_path, "finished")
            last_b = max(i for i, key in enumerate(done) if key.startswith("B-"))
            # served in turns after the restart: B is not queued behind A's 200
            assert sum(1 for key in done[:last_b] if key.startswith("A-")) < 100, done
            # a second kill -9 while the worker runs: it reconnects, and more keyed work flows
            redis_server.kill()
            await asyncio.sleep(0.5)
            redis_server.start()
            c_keys = await _send(app, "C", 10, 0.0)
            want = {*a_keys, *b_keys, *c_keys}
            await _until(lambda: want <= set(lines(tmp_path, "finished")), "all done", tails, 90)
    finally:
        assert stop(worker) == 0
    finished = lines(tmp_path, "finished")
    # at-least-once: only what was running when the server died may have run twice
    assert len(finished) - len(want) <= 8, finished


async def test_worker_killed_holding_a_keyed_batch_gets_it_redelivered(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    url = redis_server.url
    settings = {**FAST_TAKEOVER, "AIOTASK_PREFETCH": "16"}
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace, **settings)
    async with App("proc", broker=url, key_prefix=namespace) as app:
        keys = [k for t in "XYZ" for k in await _send(app, t, 10, 1.0)]
    victim = start_worker(tmp_path, env, "-c", "4")
    tails = [StderrTail(victim)]  # read all along: a full pipe would block the worker
    survivor = None
    try:
        # four running, more prefetched and waiting in the worker: kill it mid-batch
        await _until(lambda: len(lines(tmp_path, "started")) >= 4, "a batch running", tails)
        stop(victim, signal.SIGKILL)
        before_kill = set(lines(tmp_path, "started"))
        survivor = start_worker(tmp_path, env, "-c", "4")
        await _until(lambda: set(keys) <= set(lines(tmp_path, "finished")), "redelivery", tails, 90)
        started = lines(tmp_path, "started")
        again = {k for k in started if started.count(k) > 1}
        assert again <= before_kill  # only what the dead worker had started runs again
        assert all(started.count(k) <= 2 for k in keys)
        # the victim's first batch took turns between the tenants (FIFO would be X's only)
        assert {k.partition("-")[0] for k in started[:4]} == set("XYZ"), started
    finally:
        if victim.poll() is None:
            stop(victim, signal.SIGKILL)
        if survivor is not None:
            assert stop(survivor) == 0
