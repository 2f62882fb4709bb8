"""`aiotask worker -E` and `aiotask events` as real processes, on SQLite, Redis and RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App
from tests.conftest import REDIS_URL
from tests.procs import spawn_worker, start_worker, stop, wait_ready, worker_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TASKS = textwrap.dedent(
    """
    from aiotask import App

    app = App("proc")

    @app.task(name="proc.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proc.boom")
    async def boom() -> None:
        raise ValueError("cannot reach redis://admin:hunter2@db:6379/0")

    @app.task(name="proc.flaky", bind=True, max_retries=1, default_retry_delay=0.1)
    async def flaky(ctx) -> str:
        if ctx.retries == 0:
            raise ctx.retry(exc=RuntimeError("first try fails"))
        return "ok"
    """
)


@pytest.fixture(params=["sqlite", "redis", "amqp"])
async def broker_url(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db"
        return
    request.getfixturevalue("redis_url")
    url: str = request.getfixturevalue(f"{request.param}_url")
    try:
        yield url
    finally:
        await _clean(url, namespace)


async def _clean(url: str, namespace: str) -> None:
    from tests.contract.conftest import delete_prefix

    await delete_prefix(REDIS_URL, namespace)
    if url.startswith("amqp"):
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        app = App("proc", broker=url, backend=None, key_prefix=namespace)
        broker = app.broker
        assert isinstance(broker, RabbitMQBroker)
        async with app:
            await broker.delete_queue("default")
            async with broker._admin() as channel:
                await channel.exchange_delete(f"{namespace}.events")


def env_for(directory: Path, url: str, namespace: str, **settings: str) -> dict[str, str]:
    (directory / "proc_tasks.py").write_text(TASKS)
    (directory / "logs").mkdir(exist_ok=True)
    if url.startswith("amqp"):  # AMQP keeps no results: Redis does
        settings["AIOTASK_RESULT_BACKEND"] = REDIS_URL
    return worker_env(directory, url, AIOTASK_KEY_PREFIX=namespace, **settings)


def producer(url: str, namespace: str, *, events: bool) -> App:
    backend = REDIS_URL if url.startswith("amqp") else url
    return App("proc", broker=url, backend=backend, key_prefix=namespace, events=events)


def start_follower(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`aiotask events ...`, returned once it says it is following (subscribed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiotask", "events", "-A", "proc_tasks:app", *args],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # a warning (e.g. Redis without AOF) may come first
        seen.append(line)
        if "following the events" in line:
            return proc
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"aiotask events did not start: {''.join(seen)}{err}")


def start_both(
    directory: Path, env: dict[str, str], follower_args: list[str], worker_args: list[str]
) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """A follower and a worker whose start-ups overlap (each costs about a second of imports
    and connecting), for tests that need no event from the worker's start-up."""
    worker = spawn_worker(directory, env, *worker_args)
    try:
        return start_follower(directory, env, *follower_args), wait_ready(worker)
    except BaseException:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        raise


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> list[dict[str, Any]]:
    """Wait for the follower to exit by itself (--limit/--timeout); its JSON lines."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [orjson.loads(line) for line in out.splitlines()]


async def test_worker_with_events_is_followed_live(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    # the task-* events of the three tasks below: 4 + 4 (sent, received, started, succeeded
    # or failed) + 7 (sent, received, started, retried, received, started, succeeded)
    follower, worker = start_both(
        tmp_path,
        env,
        ["--json", "--type", "task-*", "--limit", "15", "--timeout", "40"],
        ["-E", "-n", "evw@test", "-c", "5", "-P", "1"],
    )
    try:
        async with producer(broker_url, namespace, events=True) as app:
            ok = await app.send_task("proc.add", args=[2, 3])
            bad = await app.send_task("proc.boom")
            flaky = await app.send_task("proc.flaky")
            assert await ok.get(timeout=20) == 5
            with pytest.raises(ValueError):
                await bad.get(timeout=20)
            assert await flaky.get(timeout=20) == "ok"
        events = finish(follower)
    finally:
        if follower.poll() is None:
            follower.kill()
        assert stop(worker) == 0
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_task.setdefault(e["task_id"], []).append(e)
    kinds = {tid: sorted(e["type"] for e in evs) for tid, evs in by_task.items()}
    assert kinds[ok.id] == ["task-received", "task-sent", "task-started", "task-succeeded"]
    assert kinds[bad.id] == ["task-failed", "task-received", "task-sent", "task-started"]
    # a retry is task-retried (with its eta), then received and started again; the worker's
    # own re-publish is not a task-sent (only producers with the `events` setting emit those)
    first_run = ["task-sent", "task-received", "task-started", "task-retried"]
    assert kinds[flaky.id] == sorted(
        [*first_run, "task-received", "task-started", "task-succeeded"]
    )
    for e in events:
        assert e["queue"] == "default"
        assert isinstance(e["timestamp"], float)
        assert abs(e["timestamp"] - time.time()) < 60
        if e["type"] != "task-sent":
            assert e["hostname"] == "evw@test"
    succeeded = next(e for e in by_task[ok.id] if e["type"] == "task-succeeded")
    assert succeeded["task"] == "proc.add"
    assert 0 <= succeeded["runtime"] < 10
    failed = next(e for e in by_task[bad.id] if e["type"] == "task-failed")
    assert failed["exception_type"] == "ValueError"
    assert "hunter2" not in failed["exception"]
    assert "redis://admin:" in failed["exception"]
    retried = next(e for e in by_task[flaky.id] if e["type"] == "task-retried")
    assert retried["exception_type"] == "RuntimeError"
    assert retried["retries"] == 0
    assert retried["eta"] >= retried["timestamp"]


async def test_worker_events_online_heartbeat_offline(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace, AIOTASK_WORKER_HEARTBEAT_INTERVAL="0.3")
    follower = start_follower(tmp_path, env, "--json", "--type", "worker-*", "--timeout", "40")
    assert follower.stdout is not None
    worker = start_worker(tmp_path, env, "--events", "-n", "evw@beats", "-c", "2", "-P", "1")
    seen: list[dict[str, Any]] = []
    try:
        while not any(e["type"] == "worker-heartbeat" for e in seen):
            seen.append(orjson.loads(follower.stdout.readline()))
        assert stop(worker) == 0
        while seen[-1]["type"] != "worker-offline":
            seen.append(orjson.loads(follower.stdout.readline()))
    finally:
        if worker.poll() is None:
            stop(worker)
        follower.send_signal(signal.SIGINT)  # Ctrl-C: a clean exit
        _, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err
    assert "Traceback" not in err
    assert seen[0]["type"] == "worker-online"
    for e in seen:
        assert e["hostname"] == "evw@beats"
        assert e["queues"] == ["default"]
        assert e["pid"] == worker.pid


async def test_events_off_writes_nothing(tmp_path: Path, broker_url: str, namespace: str) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    follower, worker = start_both(
        tmp_path, env, ["--json", "--timeout", "40"], ["-c", "5", "-P", "1"]
    )
    try:
        async with producer(broker_url, namespace, events=False) as app:
            r = await app.send_task("proc.add", args=[1, 1])
            assert await r.get(timeout=20) == 2
        # events would have been sent before the result was stored: a short grace, then
        # Ctrl-C (a clean exit), rather than a fixed --timeout long enough for a slow start
        await asyncio.sleep(1.0)
        follower.send_signal(signal.SIGINT)
        assert finish(follower) == []  # the follower saw nothing at all
    finally:
        if follower.poll() is None:
            follower.kill()
        assert stop(worker) == 0
    if broker_url.startswith("sqlite"):
        path = broker_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT count(*) FROM aiotask_events").fetchone() == (0,)
    elif broker_url.startswith("redis"):
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)
        try:
            assert await client.exists(f"{namespace}:events") == 0
        finally:
            await client.aclose()


def test_events_command_table_output(tmp_path: Path, namespace: str) -> None:
    """The readable table: a header, then one aligned row per event."""
    url = f"sqlite:///{tmp_path}/table.db"
    env = env_for(tmp_path, url, namespace)
    follower = start_follower(tmp_path, env, "--limit", "2", "--timeout", "30")
    sender = subprocess.run(
        [sys.executable, "-c", SEND],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert sender.returncode == 0, sender.stderr
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "TASK", "ID", "WORKER", "QUEUE", "DETAIL"]
    assert len(lines) == 1 + 2
    assert all("task-sent" in line and "proc.add" in line for line in lines[1:])
    assert "eta " in lines[2]


SEND = textwrap.dedent(
    """
    import asyncio
    from proc_tasks import app
    app.conf = app.conf.replace(events=True)

    async def main():
        async with app:
            await app.send_task("proc.add", args=[1, 2])
            await app.send_task("proc.add", args=[3, 4], countdown=60)

    asyncio.run(main())
    """
)
