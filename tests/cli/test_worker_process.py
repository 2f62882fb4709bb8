"""`aiotask worker` as a real process: results, warm shutdown losing nothing, kill -9 recovery."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from aiotask import App, chord, signature
from tests.conftest import REDIS_URL
from tests.procs import (
    StderrTail,
    lines,
    reap,
    release,
    run_cli,
    run_cli_here,
    spawn_worker,
    start_worker,
    start_workers,
    stop,
    stop_all,
    worker_env,
    write_tasks,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/proc.db"
    url: str = request.getfixturevalue(f"{request.param}_url")
    if request.param == "amqp":
        request.getfixturevalue("redis_url")
    return url


def results_for(url: str) -> str | None:
    """AMQP keeps no results: those tests store them in Redis."""
    return REDIS_URL if url.startswith("amqp") else None


def producer(url: str, namespace: str) -> App:
    backend = results_for(url)
    if backend:
        return App("proc", broker=url, backend=backend, key_prefix=namespace)
    return App("proc", broker=url, key_prefix=namespace)


def env_for(directory: Path, url: str, namespace: str, **settings: str) -> dict[str, str]:
    backend = results_for(url)
    if backend:
        settings["AIOTASK_RESULT_BACKEND"] = backend
    return worker_env(write_tasks(directory), url, AIOTASK_KEY_PREFIX=namespace, **settings)


async def wait_all(app: App, ids: list[str], timeout: float) -> list[object]:
    async with asyncio.timeout(timeout):
        return [await app.AsyncResult(i).get() for i in ids]


async def test_worker_process_runs_tasks(tmp_path: Path, broker_url: str, namespace: str) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    proc = start_worker(tmp_path, env, "-c", "10", "-P", "1")
    try:
        async with producer(broker_url, namespace) as app:
            r = await app.send_task("proc.add", args=[2, 3])
            assert await app.AsyncResult(r.id).get(timeout=15) == 5
            pid = await (await app.send_task("proc.cpu", args=[1])).get(timeout=30)
            assert pid not in (proc.pid, None)
    finally:
        assert stop(proc) == 0


async def test_sigterm_finishes_running_and_loses_nothing(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    proc = start_worker(tmp_path, env, "-c", "4", "--prefetch", "8")
    tail = StderrTail(proc)
    async with producer(broker_url, namespace) as app:
        keys = [f"k{i}" for i in range(20)]
        # each runs until released: the running ones are mid-flight at the signal, by design
        sent = [await app.send_task("proc.hold", args=[k]) for k in keys]
        deadline = time.monotonic() + 15
        while len(lines(tmp_path, "started")) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(lines(tmp_path, "started")) == 4  # tasks really were running at the signal
        proc.send_signal(signal.SIGTERM)
        while "warm shutdown" not in tail.text() and time.monotonic() < deadline + 15:
            await asyncio.sleep(0.02)  # the worker took the signal before any task may end
        assert "warm shutdown" in tail.text(), tail.text()
        release(tmp_path, *keys)  # the rest then run at once on the second worker
        assert reap(proc) == 0, tail.text()
        started_before = set(lines(tmp_path, "started"))
        assert started_before <= set(lines(tmp_path, "finished"))  # running tasks finished
        second = start_worker(tmp_path, env, "-c", "10")
        try:
            assert await wait_all(app, [r.id for r in sent], 30) == keys
        finally:
            assert stop(second) == 0
    assert Counter(lines(tmp_path, "finished")) == Counter(keys)  # each ran exactly once


async def test_kill_9_mid_task_is_redelivered_and_finished_once(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace, AIOTASK_VISIBILITY_TIMEOUT="2")
    victim = start_worker(tmp_path, env, "-c", "4")
    async with producer(broker_url, namespace) as app:
        keys = [f"x{i}" for i in range(4)]
        sent = [await app.send_task("proc.hold", args=[k]) for k in keys]  # run until released
        deadline = time.monotonic() + 15
        while len(lines(tmp_path, "started")) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(lines(tmp_path, "started")) == 4  # the kill lands mid-task
        stop(victim, signal.SIGKILL)  # no shutdown at all: nothing acked
        assert lines(tmp_path, "finished") == []
        release(tmp_path, *keys)  # the redelivered runs finish at once
        rescuer = start_worker(tmp_path, env, "-c", "4")
        try:
            assert await wait_all(app, [r.id for r in sent], 30) == keys
        finally:
            assert stop(rescuer) == 0
    assert Counter(lines(tmp_path, "finished")) == Counter(keys)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["worker", "-A", "no_such_module_xyz:app"], "cannot import"),
        (["worker", "-A", "os:path"], "not an aiotask App"),
        (["worker", "--bogus"], "No such option"),
        (["worker", "-A", "proc_tasks:app", "-l", "LOUD"], "bad -l"),
        (["call", "-A", "proc_tasks:app", "proc.add", "--args", "{not json"], "must be JSON"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path, argv: list[str], fragment: str
) -> None:
    env = worker_env(write_tasks(tmp_path), "memory://")
    out = run_cli(tmp_path, env, *argv)
    assert out.returncode == 2, out.stderr
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_broker_url_does_not_leak_the_password(tmp_path: Path) -> None:
    env = worker_env(write_tasks(tmp_path), "kafka://user:hunter2@host:9092")
    out = run_cli(tmp_path, env, "worker", "-A", "proc_tasks:app")
    assert out.returncode == 2
    assert "unsupported broker URL scheme" in out.stderr
    assert "hunter2" not in out.stderr


async def test_call_result_and_purge_commands(tmp_path: Path, namespace: str) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace)

    def cli(*argv: str) -> str:
        """In-process (run_cli_here): these commands' subject is what they say."""
        out = run_cli_here(tmp_path, env, *argv)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    out = run_cli(tmp_path, env, "call", "-A", "proc_tasks:app", "proc.add", "--args", "[20, 22]")
    assert out.returncode == 0, out.stderr  # `call` as a real process; the rest in-process
    task_id = out.stdout.strip()
    assert '"PENDING"' in cli("result", "-A", "proc_tasks:app", task_id)
    proc = start_worker(tmp_path, env)
    try:
        async with producer(url, namespace) as app:
            assert await app.AsyncResult(task_id).get(timeout=15) == 42
    finally:
        assert stop(proc) == 0
    shown = cli("result", "-A", "proc_tasks:app", task_id)
    assert '"SUCCESS"' in shown and "42" in shown
    cli("call", "-A", "proc_tasks:app", "proc.add", "--args", "[1, 1]")
    assert cli("purge", "-A", "proc_tasks:app", "-Q", "default", "-f") == (
        "purged 1 messages from default"
    )


async def test_chord_whose_worker_is_killed_mid_header_fires_once(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace, AIOTASK_VISIBILITY_TIMEOUT="2")
    victim = start_worker(tmp_path, env, "-c", "4")
    async with producer(broker_url, namespace) as app:
        keys = [f"h{i}" for i in range(4)]
        header = [signature("proc.hold", (k,), app=app) for k in keys]  # run until released
        result = await chord(header, signature("proc.tsum", app=app)).send()
        deadline = time.monotonic() + 15
        while len(lines(tmp_path, "started")) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(lines(tmp_path, "started")) == 4  # the kill lands mid-task
        stop(victim, signal.SIGKILL)  # every header task is mid-flight
        release(tmp_path, *keys)  # the redelivered runs finish at once
        rescuer = start_worker(tmp_path, env, "-c", "4")
        try:
            assert await app.AsyncResult(result.id).get(timeout=30) == "h0+h1+h2+h3"
            await asyncio.sleep(0.5)
        finally:
            assert stop(rescuer) == 0
    assert lines(tmp_path, "body") == ["h0,h1,h2,h3"]  # the body ran exactly once, in order


async def test_poison_message_is_dead_lettered_after_max_deliveries(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(
        tmp_path, broker_url, namespace, AIOTASK_VISIBILITY_TIMEOUT="1", AIOTASK_MAX_DELIVERIES="2"
    )
    async with producer(broker_url, namespace) as app:
        poison = await app.send_task("proc.die")
        ok = await app.send_task("proc.add", args=[1, 2])
        for _ in range(4):  # supervisor: restart the worker each time the poison kills it
            # not waiting for "ready": the poison may kill a start before it says so
            proc = spawn_worker(tmp_path, env, "-c", "1", "--prefetch", "1")
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if await app.broker.dead_letters("default"):
                    break  # it survived: the poison is buried (no fixed wait to decide that)
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                break
            if proc.stderr is not None:
                proc.stderr.close()
            assert proc.returncode == 3
        else:
            pytest.fail("the worker died on every one of 4 starts: the poison was never buried")
        try:
            assert await app.AsyncResult(ok.id).get(timeout=15) == 3
        finally:
            assert stop(proc) == 0
        assert len(lines(tmp_path, "died")) == 2  # max_deliveries, then never again
        dead = await app.broker.dead_letters("default")
        assert [d.message_id for d in dead] == [poison.id]


async def test_a_task_longer_than_the_lease_runs_once_on_a_live_worker(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace, AIOTASK_VISIBILITY_TIMEOUT="1")
    workers = start_workers(tmp_path, env, 2, "-c", "2")  # one could steal it
    try:
        async with producer(broker_url, namespace) as app:
            r = await app.send_task("proc.slow", args=["long", 3.5])  # 3.5 leases
            assert await app.AsyncResult(r.id).get(timeout=20) == "long"
            await asyncio.sleep(1.5)  # a wrongful reclaim would have started it again by now
    finally:
        assert stop_all(workers) == [0, 0]
    assert lines(tmp_path, "started") == ["long"]
    assert lines(tmp_path, "finished") == ["long"]
