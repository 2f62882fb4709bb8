"""`aiotask status / inspect / control` against real worker processes on each broker.

AMQP keeps no results: there the registry and the control channel live in the Redis result
backend (Redis pub/sub), which is what these tests check for RabbitMQ.

The workers are always real processes. Each command family (status, inspect, control) runs as
a real `python -m aiotask` process on every broker (`run_cli`, `cli_many`); the other commands,
whose subject is what they say, run the same entry point in-process (`run_cli_here`,
`cli_json`): a process start is ~0.3 s of CPU, and this file ran ~60 of them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App
from tests.conftest import REDIS_URL
from tests.contract.conftest import delete_prefix
from tests.procs import (
    lines,
    release,
    run_cli,
    run_cli_here,
    spawn_worker,
    start_worker,
    stop,
    wait_ready,
    worker_env,
    write_tasks,
)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import AsyncIterator
    from pathlib import Path

FAST = {"AIOTASK_WORKER_HEARTBEAT_INTERVAL": "0.3", "AIOTASK_WORKER_LOST_AFTER": "1.5"}
APP = ("-A", "proc_tasks:app")


@pytest.fixture(params=["sqlite", "redis", "amqp"])
async def broker_url(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/proc.db"
        return
    url: str = request.getfixturevalue(f"{request.param}_url")
    if request.param == "amqp":
        request.getfixturevalue("redis_url")
    yield url
    if request.param == "amqp":
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        async with producer(url, namespace) as app:
            assert isinstance(app.broker, RabbitMQBroker)
            for queue in ("default", "extra"):
                await app.broker.delete_queue(queue)
    await delete_prefix(REDIS_URL, namespace)


def producer(url: str, namespace: str) -> App:
    if url.startswith("amqp"):
        return App("proc", broker=url, backend=REDIS_URL, key_prefix=namespace)
    return App("proc", broker=url, key_prefix=namespace)


def env_for(directory: Path, url: str, namespace: str) -> dict[str, str]:
    settings = dict(FAST, AIOTASK_KEY_PREFIX=namespace)
    if url.startswith("amqp"):
        settings["AIOTASK_RESULT_BACKEND"] = REDIS_URL
    return worker_env(write_tasks(directory), url, **settings)


def cli_json(directory: Path, env: dict[str, str], *argv: str) -> tuple[int, Any]:
    """`aiotask ARGV -A ... --json` in-process: its exit code and parsed output."""
    return parsed(run_cli_here(directory, env, *argv, *APP, "--json"))


def parsed(done: subprocess.CompletedProcess[str]) -> tuple[int, Any]:
    return done.returncode, orjson.loads(done.stdout) if done.stdout.strip() else None


def cli_many(
    directory: Path, env: dict[str, str], *argvs: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once (one thread each): their start-ups overlap; each outcome
    is still that command's own."""
    with ThreadPoolExecutor(len(argvs)) as pool:
        return list(pool.map(lambda argv: run_cli(directory, env, *argv), argvs))


@pytest.mark.timeout(240)  # about fifteen CLI processes in a row: slow on a loaded machine
async def test_status_inspect_control_on_a_worker_process(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    proc = start_worker(tmp_path, env, "-n", "w1", "-c", "4", "-P", "1")
    try:
        reads = cli_many(
            tmp_path,
            env,
            ("status", *APP, "--json"),
            ("inspect", "ping", *APP, "--json"),
            ("inspect", "registered", "-d", "w1", *APP, "--json"),
            ("inspect", "conf", *APP, "--json"),
        )
        code, status = parsed(reads[0])
        assert code == 0, status
        [entry] = status["workers"]
        assert entry["name"] == "w1" and entry["state"] == "online"
        assert entry["pid"] == proc.pid and entry["queues"] == ["default"] and entry["host"]

        assert parsed(reads[1]) == (0, {"w1": "pong"})
        code, registered = parsed(reads[2])
        assert code == 0 and "proc.add" in registered["w1"]
        code, conf = parsed(reads[3])
        assert code == 0 and conf["w1"]["key_prefix"] == namespace

        async with producer(broker_url, namespace) as app:
            slow = await app.send_task("proc.hold", args=["s1"])  # runs until released
            deadline = time.monotonic() + 15
            while not lines(tmp_path, "started") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            code, active = cli_json(tmp_path, env, "inspect", "active")
            assert code == 0 and [t["id"] for t in active["w1"]] == [slow.id]
            code, stats = cli_json(tmp_path, env, "inspect", "stats")
            assert code == 0 and stats["w1"]["active"] == 1 and stats["w1"]["pid"] == proc.pid

            done = run_cli_here(tmp_path, env, "control", *APP, "rate-limit", "proc.add", "50/s")
            assert done.returncode == 0 and "-> w1: OK" in done.stdout, done.stderr
            done = run_cli_here(tmp_path, env, "control", *APP, "add-consumer", "extra", "-d", "w1")
            assert done.returncode == 0, done.stderr
            extra = await app.send_task("proc.add", args=[20, 22], queue="extra")
            assert await extra.get(timeout=20) == 42  # the worker now reads "extra"
            done = run_cli_here(tmp_path, env, "control", "cancel-consumer", "extra", *APP)
            assert done.returncode == 0 and "no longer consuming extra" in done.stdout
            code, grown = cli_json(tmp_path, env, "control", "pool-grow", "3", "-d", "w1")
            assert (code, grown) == (0, {"w1": {"ok": "concurrency 4 -> 7"}})
            code, stats = cli_json(tmp_path, env, "inspect", "stats")
            assert code == 0 and stats["w1"]["concurrency"] == 7, stats
            done = run_cli_here(tmp_path, env, "control", *APP, "pool-shrink", "10")
            assert done.returncode == 0 and "concurrency 7 -> 1" in done.stdout, done.stdout

            # a real process: the control family's (status and inspect: the four above)
            done = run_cli(tmp_path, env, "control", *APP, "shutdown", "-d", "w1")
            assert done.returncode == 0 and "shutting down" in done.stdout, done.stderr
            release(tmp_path, "s1")
            assert await slow.get(timeout=20) == "s1"  # warm: the running task finished
        assert proc.wait(30) == 0
        done = run_cli_here(tmp_path, env, "status", *APP)
        assert done.returncode == 0 and "no workers in the registry" in done.stdout
    finally:
        stop(proc)


# The registry and the control channel live in the result backend: with RabbitMQ that is Redis,
# the path the "redis" case already takes (the AMQP consumer paths are in the other tests here).
@pytest.mark.parametrize("broker_url", ["sqlite", "redis"], indirect=True)
async def test_bad_input_and_a_lost_worker(tmp_path: Path, broker_url: str, namespace: str) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    proc = start_worker(tmp_path, env, "-n", "w1", "-c", "2")
    try:
        nobody, everything, fast, nope = (
            run_cli_here(tmp_path, env, *argv)
            for argv in (
                ("inspect", "ping", *APP, "-d", "nobody"),
                ("inspect", "everything", *APP),
                ("control", *APP, "rate-limit", "proc.add", "fast"),
                ("control", *APP, "rate-limit", "proc.nope", "1/s"),
            )
        )
        assert nobody.returncode == 2 and "unknown worker(s) nobody; known: w1" in nobody.stderr
        assert everything.returncode == 2 and "unknown inspect command" in everything.stderr
        assert fast.returncode == 2 and "bad rate limit" in fast.stderr
        assert nope.returncode == 1 and "-> w1: ERROR task 'proc.nope' is not registered" in (
            nope.stdout
        )
        async with producer(broker_url, namespace) as app:
            backend = await app.result_backend()
            for junk in (b"\x00garbage", b'"a string"', b'{"op": "control", "cmd": 5}'):
                await backend.broadcast(junk)
        assert cli_json(tmp_path, env, "inspect", "ping") == (0, {"w1": "pong"})
        assert proc.poll() is None  # malformed control messages never stop a worker
        done = run_cli_here(tmp_path, env, "status", *APP, "--local")
        assert done.returncode == 0 and "1 online, 0 lost" in done.stdout, done.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        stop(proc)
    # killed: nobody answers a ping (asked while the lost wait below runs: online or lost in
    # the registry, the dead worker never replies, and the command waits its whole timeout)
    ping = asyncio.create_task(
        asyncio.to_thread(run_cli, tmp_path, env, "inspect", "ping", *APP, "--timeout", "0.5")
    )
    # it stays in the registry, shown as lost once it missed worker_lost_after (waited for
    # in-process: one `aiotask status` then checks what the command shows)
    async with producer(broker_url, namespace) as app:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            known = await app.control.workers()
            if known and known[0].state(time.time()) == "lost":
                break
            await asyncio.sleep(0.1)
    done = await ping
    assert done.returncode == 1 and "no worker replied within 0.5s" in done.stderr
    code, status = cli_json(tmp_path, env, "status")
    assert code == 0 and status["workers"][0]["name"] == "w1"
    assert status["workers"][0]["state"] == "lost"
    done = run_cli(tmp_path, env, "status", *APP, "--local")  # the (real) readiness probe fails
    assert done.returncode == 1 and "no online worker on" in done.stderr, done.stdout


async def test_cancel_consumer_leaves_the_queue_to_other_workers(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    """AMQP regression: the server-side consumer is cancelled too, so the worker no longer
    takes (and sits on) messages of the queue it stopped consuming."""
    env = env_for(tmp_path, broker_url, namespace)
    w1 = start_worker(tmp_path, env, "-n", "w1", "-Q", "default,extra", "-c", "2")
    w2 = None
    try:
        done = run_cli_here(tmp_path, env, "control", *APP, "cancel-consumer", "extra")
        assert done.returncode == 0 and "no longer consuming extra" in done.stdout, done.stderr
        async with producer(broker_url, namespace) as app:
            sent = [await app.send_task("proc.add", args=[i, 1], queue="extra") for i in range(3)]
            # w2 starts during the wait, on "default" alone: it takes "extra" only after it
            w2 = spawn_worker(tmp_path, env, "-n", "w2", "-Q", "default", "-c", "2")
            await asyncio.sleep(1.0)  # time for a still-open consumer to grab them
            await asyncio.to_thread(wait_ready, w2)
            added = await app.control.add_consumer("extra", destination=["w2"])
            assert added == {"w2": {"ok": "now consuming extra"}}, added
            assert [await r.get(timeout=20) for r in sent] == [1, 2, 3]
            code, stats = cli_json(tmp_path, env, "inspect", "stats", "-d", "w1")
            assert code == 0 and stats["w1"]["done"] == 0 and stats["w1"]["queues"] == ["default"]
    finally:
        assert stop(w1) == 0
        if w2 is not None:
            assert stop(w2) == 0


async def test_control_revoke_terminates_a_running_task(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    proc = start_worker(tmp_path, env, "-n", "w1", "-c", "2")
    try:
        async with producer(broker_url, namespace) as app:
            long = await app.send_task("proc.slow", args=["long", 60.0])
            deadline = time.monotonic() + 15
            while "long" not in lines(tmp_path, "started") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            done = run_cli_here(tmp_path, env, "control", *APP, "revoke", long.id, "--terminate")
            assert done.returncode == 0 and "revoked 1 task(s) (terminate)" in done.stdout
            while time.monotonic() < deadline + 15:  # in-process: no CLI start per poll
                if (await app.control.inspect("active")).get("w1") == []:
                    break
                await asyncio.sleep(0.1)
            code, active = cli_json(tmp_path, env, "inspect", "active")
            assert (code, active) == (0, {"w1": []})  # stopped at once, not after its 60 s
            assert await long.state() == "REVOKED"
            assert "long" not in lines(tmp_path, "finished")
    finally:
        assert stop(proc) == 0
