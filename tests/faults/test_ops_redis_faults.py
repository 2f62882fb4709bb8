"""Operations tools through faults, on a private Redis: a dead-letter replay killed -9 midway
loses nothing; the worker registry and `aiotask status` are right after a Redis restart;
`aiotask events` keeps following through one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import orjson

from aiotask import App
from tests.procs import start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from aiotask.brokers.base import QueueStats
    from tests.servers import PrivateRedis

#: dead letters in the replay test: 16 batches of REPLAY_BATCH (500), under the stream cap
DEAD = 8_000


def _cli(tmp: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiotask", *argv],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _status(tmp: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiotask", "status", "-A", "proc_tasks:app", *argv],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _stats(app: App, queue: str) -> QueueStats:
    return next(s for s in await app.dead_letters.queue_stats([queue]) if s.queue == queue)


async def _drain_ids(app: App, queue: str) -> list[str]:
    """Every message id waiting in `queue` (received and acked: the queue ends empty)."""
    ids: list[str] = []
    while True:
        try:
            async with asyncio.timeout(0.5):  # receive waits for messages: none left
                got = await app.broker.receive([queue], 1000)
        except TimeoutError:
            return ids
        ids += [d.message_id for d in got]
        await app.broker.ack(got)


async def _dead_letter(app: App, queue: str, n: int) -> list[str]:
    sent = [
        app.message_factory("proc.add", [i, i], {}, {"queue": queue}, str(uuid.uuid4()))
        for i in range(n)
    ]
    for start in range(0, n, 2000):
        await app.publish(sent[start : start + 2000])
    dead = 0
    while dead < n:
        got = await app.broker.receive([queue], 1000)
        await app.broker.nack(got, requeue=False)
        dead += len(got)
    return [m.id for m in sent]


async def test_dlq_replay_killed_midway_loses_nothing(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(write_tasks(tmp_path), redis_server.url, AIOTASK_KEY_PREFIX=namespace)
    async with App("proc", broker=redis_server.url, key_prefix=namespace) as app:
        ids = await _dead_letter(app, "replayq", DEAD)
        stats = await _stats(app, "replayq")
        assert (stats.ready, stats.dead) == (0, DEAD)
        replay = _cli(tmp_path, env, "dlq", "-A", "proc_tasks:app", "replay", "--all")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # kill -9 once the first batch is back
                stats = await _stats(app, "replayq")
                if stats.ready or replay.poll() is not None:
                    break
                await asyncio.sleep(0.002)
        finally:
            replay.kill()
            _, err = replay.communicate()
        assert replay.returncode == -9, err
        stats = await _stats(app, "replayq")
        assert stats.ready > 0 and stats.dead > 0, stats  # killed midway
        # nothing lost: every id is queued again, still dead-lettered, or both (one batch)
        dead_now = {d.id for d in await app.dead_letters.list(queue="replayq")}
        queued = await _drain_ids(app, "replayq")
        assert set(ids) == dead_now | set(queued)
        assert len(dead_now & set(queued)) <= 500  # at most the batch the kill interrupted
        # replaying again finishes the job
        report = await app.dead_letters.replay(queue="replayq")
        assert set(report.ids) == dead_now
        assert await app.dead_letters.list(queue="replayq") == []
        assert set(await _drain_ids(app, "replayq")) == dead_now


async def test_registry_and_status_are_right_after_a_redis_restart(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(
        write_tasks(tmp_path),
        redis_server.url,
        AIOTASK_KEY_PREFIX=namespace,
        AIOTASK_WORKER_HEARTBEAT_INTERVAL="0.5",
        AIOTASK_WORKER_LOST_AFTER="3",
    )
    worker = start_worker(tmp_path, env, "-n", "regw", "-c", "4")
    try:
        async with App("proc", broker=redis_server.url, key_prefix=namespace) as app:
            assert await (await app.send_task("proc.add", args=[1, 1])).get(timeout=10) == 2
            redis_server.kill()  # kill -9 under the running worker
            await asyncio.sleep(1.0)
            redis_server.start()  # same port and append-only file
            assert await (await app.send_task("proc.add", args=[2, 2])).get(timeout=20) == 4
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                [info] = await app.control.workers()
                if info.done == 2:
                    break
                await asyncio.sleep(0.1)
            assert (info.name, info.done, info.pid) == ("regw", 2, worker.pid)
            assert info.state(time.time()) == "online"
        done = await asyncio.to_thread(_status, tmp_path, env, "--json")
        assert done.returncode == 0, done.stderr
        [row] = orjson.loads(done.stdout)["workers"]
        assert (row["name"], row["state"], row["done"]) == ("regw", "online", 2)
        worker.kill()  # a worker that dies for good shows as lost, from the store alone
        worker.communicate()
        await asyncio.sleep(3.5)
        done = await asyncio.to_thread(_status, tmp_path, env)
        assert done.returncode == 0 and "0 online, 1 lost" in done.stdout, done.stdout
    finally:
        if worker.poll() is None:
            stop(worker)


async def test_events_follow_survives_a_redis_restart(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(write_tasks(tmp_path), redis_server.url, AIOTASK_KEY_PREFIX=namespace)
    follower = _cli(tmp_path, env, "events", "-A", "proc_tasks:app", "--json",
                    "--type", "task-succeeded", "--limit", "2", "--timeout", "60")  # fmt: skip
    assert follower.stderr is not None
    for line in follower.stderr:
        if "following the events" in line:
            break
    worker = start_worker(tmp_path, env, "-E", "-c", "4")
    try:
        async with App("proc", broker=redis_server.url, key_prefix=namespace) as app:
            first = await app.send_task("proc.add", args=[1, 1])
            assert await first.get(timeout=10) == 2
            await asyncio.sleep(1.0)  # the worker flushes its events every 0.25 s
            redis_server.kill()
            await asyncio.sleep(1.0)
            redis_server.start()
            second = await app.send_task("proc.add", args=[2, 2])
            assert await second.get(timeout=20) == 4
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
        assert stop(worker) == 0
    assert follower.returncode == 0, err
    seen = [orjson.loads(line)["task_id"] for line in out.splitlines()]
    assert seen == [first.id, second.id], err
