"""Unique tasks across OS processes: senders in several processes race for one key, and a
worker killed with -9 mid-task keeps its lock until the redelivered run finishes (then it is
released, not left to expire). On SQLite, Redis, PostgreSQL, and RabbitMQ with a Redis result
backend."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.coordination.unique import debounce_key, running_lock, unique_key
from aiotask.exceptions import TaskRevoked
from tests.procs import lines, release, spawn_worker, start_worker, stop, wait_ready, worker_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TASKS = textwrap.dedent(
    """
    import asyncio, os
    from aiotask import App

    app = App("proc", shutdown_grace=20.0)
    LOG = os.environ["TEST_LOG_DIR"]

    def _mark(kind: str, key: str) -> None:
        with open(os.path.join(LOG, kind), "a") as f:
            f.write(key + "\\n")

    @app.task(name="proc.uwork", unique=True)
    async def uwork(key: str) -> str:
        _mark("ran", key)
        return key

    async def _gate(key: str) -> None:
        # until the test calls release(directory, key), at most 120 s: no timing guess
        for _ in range(6000):
            if os.path.exists(os.path.join(LOG, "release-" + key)):
                return
            await asyncio.sleep(0.02)

    @app.task(name="proc.uhold", unique=True)
    async def uhold(key: str) -> str:
        _mark("started", key)
        await _gate(key)
        _mark("finished", key)
        return key

    @app.task(name="proc.dhold", debounce=0.3, debounce_key="doc")
    async def dhold(doc: str, text: str) -> str:
        _mark("dstarted", text)
        await _gate(text)
        return text
    """
)

SENDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from proc_tasks import app, uwork

    async def main() -> None:
        go, n = sys.argv[1], int(sys.argv[2])
        async with app:
            await app.connect()
            print("connected", flush=True)  # the test starts everyone at once when all are
            while not os.path.exists(go):
                await asyncio.sleep(0.005)
            results = await asyncio.gather(*(uwork.send("same") for _ in range(n)))
        print(" ".join(r.id for r in results))

    asyncio.run(main())
    """
)

SENDERS = 4
PER_SENDER = 25
SOON = 30.0


class Setup:
    """Where the processes meet: broker and backend URLs, env, and an app of the same name."""

    def __init__(self, tmp_path: Path, broker: str, backend: str, namespace: str) -> None:
        (tmp_path / "proc_tasks.py").write_text(TASKS)
        (tmp_path / "sender.py").write_text(SENDER)
        (tmp_path / "logs").mkdir()
        self.dir = tmp_path
        self.env = worker_env(
            tmp_path,
            broker,
            AIOTASK_RESULT_BACKEND=backend,
            AIOTASK_KEY_PREFIX=namespace,
            # a dead worker's message comes back within seconds on every broker
            AIOTASK_VISIBILITY_TIMEOUT="3",
            AIOTASK_WORKER_HEARTBEAT_INTERVAL="0.5",
            AIOTASK_WORKER_LOST_AFTER="2",
        )
        self.app = App("proc", broker=broker, backend=backend, key_prefix=namespace)

    async def holder(self, *args: object) -> str | None:
        backend = await self.app.result_backend()
        store = backend.lock_store()
        return await store.get(unique_key("proc.uhold", None, args, {}))

    async def running(self, doc: str) -> str | None:
        """The send of `proc.dhold` for `doc` that holds the debounce running lock."""
        backend = await self.app.result_backend()
        key = debounce_key("proc.dhold", "doc", [], {"doc": doc})
        return await backend.lock_store().get(running_lock(key))


@pytest.fixture(params=["sqlite", "redis", "amqp", "postgres"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[Setup]:
    if request.param == "amqp":
        broker, backend = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    else:
        broker = backend = request.getfixturevalue(f"{request.param}_url")
    s = Setup(tmp_path, broker, backend, namespace)
    try:
        yield s
    finally:
        await s.app.connect()
        await s.app.broker.purge("default")
        if request.param == "amqp":
            from aiotask.brokers.rabbitmq import RabbitMQBroker

            assert isinstance(s.app.broker, RabbitMQBroker)
            await s.app.broker.delete_queue("default")
        await s.app.close()
        if request.param in ("redis", "amqp"):  # PostgreSQL: the namespace drops the schema
            from tests.contract.conftest import delete_prefix

            await delete_prefix(request.getfixturevalue("redis_url"), namespace)


async def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


def _run_senders(setup: Setup) -> list[str]:
    """Run the sender processes, all sending at the same instant; every id they got back."""
    go = setup.dir / "go"  # created once every sender has imported and connected
    senders = [
        subprocess.Popen(
            [sys.executable, "sender.py", str(go), str(PER_SENDER)],
            cwd=setup.dir,
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(SENDERS)
    ]
    try:
        for proc in senders:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "connected", proc.stderr
        go.touch()
        ids: list[str] = []
        for proc in senders:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            ids += out.split()
        return ids
    finally:
        for proc in senders:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


async def test_a_hundred_sends_from_several_processes_run_once(setup: Setup) -> None:
    ids = await asyncio.to_thread(_run_senders, setup)
    assert len(ids) == SENDERS * PER_SENDER
    assert len(set(ids)) == 1, f"{len(set(ids))} different tasks were queued"
    worker = start_worker(setup.dir, setup.env, "-c", "4")
    try:
        async with setup.app:
            assert await setup.app.AsyncResult(ids[0]).get(timeout=SOON) == "same"
            stats = await setup.app.broker.queue_stats(["default"])
            assert stats[0].ready == 0, "a duplicate reached the queue"
    finally:
        assert stop(worker) == 0
    assert lines(setup.dir, "ran") == ["same"]


async def test_kill_9_keeps_the_lock_until_the_redelivered_run_finishes(setup: Setup) -> None:
    first = start_worker(setup.dir, setup.env, "-c", "4")
    second = None
    app = setup.app
    try:
        async with app:
            sent = await app.send_task("proc.uhold", ["k"], unique=True)  # runs until released
            assert await _wait_for(lambda: lines(setup.dir, "started") == ["k"], SOON)
            # starts while the first dies and its lease lapses: the message can only reach
            # it once the first worker is gone (held by it until then)
            second = spawn_worker(setup.dir, setup.env, "-c", "4")
            stop(first, signal.SIGKILL)
            # the task is neither finished nor lost: its lock stays, duplicates are not sent
            assert await setup.holder("k") == sent.id
            again = await app.send_task("proc.uhold", ["k"], unique=True)
            assert again.id == sent.id
            release(setup.dir, "k")  # the redelivered run finishes at once
            await asyncio.to_thread(wait_ready, second)
            assert await app.AsyncResult(sent.id).get(timeout=SOON) == "k"
            assert lines(setup.dir, "started") == ["k", "k"], "redelivered once"
            # released by the redelivered run's settlement, long before unique_for (1 h)
            assert await _wait_for_free(setup, "k")
    finally:
        if first.poll() is None:
            stop(first, signal.SIGKILL)
        if second is not None:
            assert stop(second) == 0


async def _wait_for_free(setup: Setup, *args: object) -> bool:
    deadline = time.monotonic() + SOON
    while time.monotonic() < deadline:
        if await setup.holder(*args) is None:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_kill_9_of_a_debounced_run_then_a_later_send_runs_alone(setup: Setup) -> None:
    first = start_worker(setup.dir, setup.env, "-c", "4")
    second = None
    app = setup.app
    try:
        async with app:
            v1 = await app.send_task(
                "proc.dhold", kwargs={"doc": "d", "text": "v1"}, debounce=0.3, debounce_key="doc"
            )
            assert await _wait_for(lambda: lines(setup.dir, "dstarted") == ["v1"], SOON)
            second = spawn_worker(setup.dir, setup.env, "-c", "4")  # v1 is the first's
            stop(first, signal.SIGKILL)
            release(setup.dir, "v1", "v2")  # from now on, every run ends at once
            assert await setup.running("d") == v1.id, "the killed run keeps its running lock"
            v2 = await app.send_task(
                "proc.dhold", kwargs={"doc": "d", "text": "v2"}, debounce=0.3, debounce_key="doc"
            )
            await asyncio.to_thread(wait_ready, second)
            # v1 comes back, is no longer the latest: dropped, its lock released; v2 runs
            assert await app.AsyncResult(v2.id).get(timeout=SOON) == "v2"
            with pytest.raises(TaskRevoked):
                await app.AsyncResult(v1.id).get(timeout=SOON)
            assert lines(setup.dir, "dstarted") == ["v1", "v2"]
            deadline = time.monotonic() + SOON
            while await setup.running("d") is not None:
                assert time.monotonic() < deadline, "the running lock was not released"
                await asyncio.sleep(0.05)
    finally:
        if first.poll() is None:
            stop(first, signal.SIGKILL)
        if second is not None:
            assert stop(second) == 0
