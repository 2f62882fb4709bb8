"""`aiotask queues` and `aiotask dlq` beside a real worker process: a poison message is
dead-lettered, counted, listed, shown, replayed (it runs), and purged.

Each command (call, dlq, queues) runs as a real `python -m aiotask` process on every broker
(`cli`); the rest, whose subject is what they say, run the same entry point in-process (`here`,
`cli_json`): a process start is ~0.3 s of CPU.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App
from tests.conftest import REDIS_URL
from tests.contract.conftest import delete_prefix
from tests.procs import (
    StderrTail,
    lines,
    run_cli,
    run_cli_here,
    spawn_worker,
    start_worker,
    stop,
    worker_env,
)

# About a dozen CLI processes and a worker per test: on a loaded 2-core machine (load 10-14)
# one took over the default 60 s, and its unreaped worker then failed the next test.
pytestmark = pytest.mark.timeout(180)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

#: Written as proc_tasks.py (the module tests.procs.start_worker runs).
TASKS = textwrap.dedent(
    """
    import os
    from aiotask import App
    from aiotask.exceptions import Reject

    app = App("dlqproc", task_routes={"dlqp.routed": "routed"})
    LOG = os.environ["TEST_LOG_DIR"]

    @app.task(name="dlqp.crash")
    async def crash() -> str:
        budget = os.path.join(LOG, "budget")
        left = int(open(budget).read()) if os.path.exists(budget) else 0
        if left > 0:  # a poison message: it kills the worker process while budget lasts
            with open(budget, "w") as f:
                f.write(str(left - 1))
            with open(os.path.join(LOG, "crashed"), "a") as f:
                f.write("x\\n")
            os._exit(3)
        with open(os.path.join(LOG, "ran"), "a") as f:
            f.write("crash\\n")
        return "ok"

    @app.task(name="dlqp.poison")
    async def poison(x: int) -> int:
        if not os.path.exists(os.path.join(LOG, "allow")):
            raise Reject(f"poison pill {x}")
        with open(os.path.join(LOG, "ran"), "a") as f:
            f.write(f"{x}\\n")
        return x * 10
    """
)
APP = ("-A", "proc_tasks:app")


@pytest.fixture(params=["sqlite", "redis", "amqp"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[tuple[Path, dict[str, str]]]:
    settings = {"AIOTASK_KEY_PREFIX": namespace}
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/proc.db"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    if request.param == "amqp":  # RabbitMQ keeps no results: the worker stores them in Redis
        request.getfixturevalue("redis_url")
        settings["AIOTASK_RESULT_BACKEND"] = REDIS_URL
    (tmp_path / "proc_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    try:
        yield tmp_path, worker_env(tmp_path, url, **settings)
    finally:
        if request.param == "amqp":
            from aiotask.brokers.rabbitmq import RabbitMQBroker

            app = App("cleanup", broker=url, backend=None, key_prefix=namespace)
            assert isinstance(app.broker, RabbitMQBroker)
            async with app:
                for queue in ("default", "routed"):
                    await app.broker.delete_queue(queue)
        if request.param in ("redis", "amqp"):
            await delete_prefix(REDIS_URL, namespace)


async def cli(directory: Path, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """Run `aiotask ARGV` as a process, off the event loop; (exit code, stdout, stderr)."""
    done = await asyncio.to_thread(run_cli, directory, env, *argv)
    return done.returncode, done.stdout, done.stderr


async def here(directory: Path, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """`cli` in-process (tests.procs.run_cli_here), off the event loop."""
    done = await asyncio.to_thread(run_cli_here, directory, env, *argv)
    return done.returncode, done.stdout, done.stderr


async def cli_json(directory: Path, env: dict[str, str], *argv: str) -> Any:
    """`aiotask ARGV --json` in-process; its parsed output (exit code 0 asserted)."""
    code, out, err = await here(directory, env, *argv, "--json")
    assert code == 0, err
    return orjson.loads(out)


async def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def test_dead_letter_list_show_replay_purge_from_the_command_line(
    setup: tuple[Path, dict[str, str]],
) -> None:
    directory, env = setup
    amqp = env["AIOTASK_BROKER_URL"].startswith("amqp")
    worker = start_worker(directory, env, "-Q", "default,routed", "-c", "4")
    try:
        ids: list[str] = []
        for run in (cli, here):  # one real process, one in-process
            x = len(ids) + 1
            code, out, err = await run(
                directory, env, "call", *APP, "dlqp.poison", "--args", f"[{x}]"
            )
            assert code == 0, err
            ids.append(out.strip())

        async with broker_app(env) as app:  # in-process polling: no CLI start per poll

            async def two_dead() -> bool:
                return len(await app.broker.dead_letters("default")) == 2

            assert await wait_for(two_dead), "the poison messages were not dead-lettered"
        code, out, err = await cli(directory, env, "dlq", *APP, "list", "--json")  # a process
        assert code == 0, err
        found: list[dict[str, Any]] = orjson.loads(out)
        assert {(d["id"], d["task"], d["queue"], d["reason"]) for d in found} == {
            (ids[0], "dlqp.poison", "default", "poison pill 1"),
            (ids[1], "dlqp.poison", "default", "poison pill 2"),
        }

        stats = {s["queue"]: s for s in await cli_json(directory, env, "queues", *APP)}
        assert set(stats) >= {"default", "routed"}  # the task_routes target is listed too
        assert stats["default"]["dead"] == 2
        assert stats["routed"]["dead"] == 0
        if amqp:
            assert stats["default"]["in_flight"] is None
        else:
            assert stats["default"]["in_flight"] == 0
        code, out, _ = await cli(directory, env, "queues", *APP)
        assert code == 0 and "IN FLIGHT" in out and "default" in out

        shown = await cli_json(directory, env, "dlq", *APP, "show", ids[0])
        assert (shown["id"], shown["args"], shown["reason"]) == (ids[0], [1], "poison pill 1")
        filtered = await cli_json(directory, env, "dlq", *APP, "list", "--reason", "PILL 2")
        assert [d["id"] for d in filtered] == [ids[1]]

        (directory / "logs" / "allow").write_text("")
        replayed = await cli_json(directory, env, "dlq", *APP, "replay", ids[0])
        assert replayed == {"replayed": [ids[0]], "missing": []}

        async def ran() -> list[str]:
            return lines(directory, "ran")

        assert await wait_for(ran) == ["1"]

        code, out, err = await here(directory, env, "dlq", "purge", *APP)  # -A after: fine too
        assert code == 0, err
        assert "purged 1 dead letter(s)" in out and ids[1] in out
        assert await cli_json(directory, env, "dlq", *APP, "list") == []
    finally:
        assert stop(worker) == 0
    assert lines(directory, "ran") == ["1"]  # the purged one never ran


# Exit codes and messages of the command line alone: one broker is enough here; each broker's
# replay of a missing id is covered by tests/integration/test_dead_letters_api.py.
@pytest.mark.parametrize("setup", ["sqlite"], indirect=True)
async def test_bad_input_has_clear_messages_and_exit_codes(
    setup: tuple[Path, dict[str, str]],
) -> None:
    directory, env = setup
    code, out, err = await cli(directory, env, "dlq", *APP, "replay", "no-such-id")
    assert code == 2
    assert "not a dead letter" in err and "no-such-id" in err
    assert "replayed 0" in out
    # the store exists now; the other commands change nothing
    # (in-process: the same entry point, exit codes and messages as the process above)
    as_json, no_ids, both, show, no_app, replay_all = [
        await here(directory, env, *argv)
        for argv in (
            ("dlq", *APP, "replay", "no-such-id", "--json"),
            ("dlq", *APP, "replay"),
            ("dlq", *APP, "replay", "x", "--all"),
            ("dlq", *APP, "show", "no-such-id"),
            ("dlq", "list"),
            ("dlq", *APP, "replay", "--all", "--json"),
        )
    ]
    assert as_json[0] == 2 and "no-such-id" in as_json[2]
    assert no_ids[0] == 2 and "--all" in no_ids[2]
    assert both[0] == 2 and "not both" in both[2]
    assert show[0] == 2 and "'no-such-id' is not a dead letter" in show[2]
    assert no_app[0] == 2 and "missing -A/--app" in no_app[2]
    code, out, err = replay_all
    assert (code, orjson.loads(out)) == (0, {"replayed": [], "missing": []}), err


async def supervise(
    directory: Path, env: dict[str, str], runs: int, survived: Callable[[], Awaitable[bool]]
) -> subprocess.Popen[str]:
    """Start a worker again each time the poison kills it; returns the one that survives.

    Survival is `survived()` turning true (the message was dead-lettered, or ran) while the
    worker lives, polled: no fixed wait to tell a survivor from a worker about to crash. Not
    waiting for "ready": the poison may kill a start before it says so (on SQLite it did).
    """
    for _ in range(runs):
        proc = spawn_worker(directory, env, "-c", "1", "--prefetch", "1")
        StderrTail(proc)  # read all along: nobody else reads the pipe
        deadline = time.monotonic() + 45  # its start-up included
        while proc.poll() is None and time.monotonic() < deadline:
            if await survived():
                return proc
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            return proc  # neither crashed nor done: the caller's checks will say why
        if proc.stderr is not None:
            proc.stderr.close()
        assert proc.returncode == 3
    raise AssertionError(f"the worker died {runs} times")


def broker_app(env: dict[str, str]) -> App:
    """An App on the test's broker, to poll dead letters in-process (no CLI start per poll)."""
    return App(
        "dlqproc",
        broker=env["AIOTASK_BROKER_URL"],
        backend=env.get("AIOTASK_RESULT_BACKEND"),
        key_prefix=env["AIOTASK_KEY_PREFIX"],
    )


async def test_a_message_dead_lettered_at_max_deliveries_is_replayed_with_a_fresh_count(
    setup: tuple[Path, dict[str, str]],
) -> None:
    """It crashed its worker max_deliveries (2) times; after replay it crashes once more and
    still runs on the next delivery: the replayed copy counts from zero."""
    directory, env = setup
    env = {**env, "AIOTASK_VISIBILITY_TIMEOUT": "1", "AIOTASK_MAX_DELIVERIES": "2"}
    (directory / "logs" / "budget").write_text("3")
    code, out, err = await cli(directory, env, "call", *APP, "dlqp.crash")
    assert code == 0, err
    task_id = out.strip()
    async with broker_app(env) as app:

        async def buried() -> bool:
            return bool(await app.broker.dead_letters("default"))

        survivor = await supervise(directory, env, 4, buried)
    try:
        assert lines(directory, "crashed") == ["x", "x"]
        [dead] = await cli_json(directory, env, "dlq", *APP, "list", "--task", "dlqp.crash")
        assert dead["id"] == task_id and "max_deliveries=2" in dead["reason"]
        replayed = await cli_json(directory, env, "dlq", *APP, "replay", "--all")
        assert replayed == {"replayed": [task_id], "missing": []}
        assert await asyncio.to_thread(survivor.wait, 15) == 3  # third crash: the copy's first
    finally:
        stop(survivor)

    async def ran() -> list[str]:
        return lines(directory, "ran")

    async def has_run() -> bool:
        return bool(await ran())

    last = await supervise(directory, env, 2, has_run)
    try:
        assert await wait_for(ran) == ["crash"]  # delivery 2 of the copy: within max_deliveries
    finally:
        assert stop(last) == 0
    assert lines(directory, "crashed") == ["x", "x", "x"]
    assert await cli_json(directory, env, "dlq", *APP, "list") == []
