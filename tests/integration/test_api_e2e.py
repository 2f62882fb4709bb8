"""Caller-side API edges end to end, through a real Worker on the memory broker."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from aiotask import App, group
from aiotask.exceptions import (
    ConfigurationError,
    MessageTooLarge,
    ResultTimeout,
    SerializationError,
    TaskError,
)
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

app = App("api-e2e", broker="memory://", backend="memory://", shutdown_grace=5.0)
TIMEOUT = 30


@app.task
async def exits_async(code: int) -> None:
    sys.exit(code)


@app.task
def exits_in_pool(code: int) -> None:
    sys.exit(code)


@app.task(autoretry_for=(Exception,), max_retries=2, default_retry_delay=0)
def exits_despite_autoretry(where: str) -> None:
    with open(where, "a") as f:
        f.write("ran\n")
    sys.exit(4)


@app.task
async def still_alive() -> str:
    return "alive"


@pytest.fixture(autouse=True)
async def fresh_app() -> None:
    await app.close()
    app._broker = app._backend = None


@pytest.mark.parametrize("task", [exits_async, exits_in_pool], ids=["coroutine", "process"])
async def test_sys_exit_in_a_task_is_a_task_error_for_the_caller(task: object) -> None:
    assert task is exits_async or task is exits_in_pool
    async with app, start_worker(app, processes=1):
        r = await task.send(3)
        with pytest.raises(TaskError) as info:
            await r.get(timeout=TIMEOUT)
        assert info.value.remote_type == "builtins.SystemExit"
        assert str(info.value) == "SystemExit: 3"
        # the worker survived the task's exit and still runs the next one
        assert await (await still_alive.send()).get(timeout=TIMEOUT) == "alive"


async def test_sys_exit_is_not_retried_by_autoretry_for_exception(tmp_path: Path) -> None:
    """SystemExit is no Exception: autoretry_for=(Exception,) does not retry it, in the pool
    either (the worker classifies the child's SystemExit as such, not as a TaskError)."""
    runs = tmp_path / "runs"
    async with app, start_worker(app, processes=1):
        r = await exits_despite_autoretry.send(str(runs))
        with pytest.raises(TaskError, match="SystemExit: 4"):
            await r.get(timeout=TIMEOUT)
    assert runs.read_text() == "ran\n"


# --- what cannot be sent --------------------------------------------------------------------

capped = App("api-e2e-capped", broker="memory://", backend="memory://", max_message_size=2048)


@capped.task
async def store(blob: object, note: str = "") -> None:
    return None


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def waiting(queue: str = "default") -> int:
    """Messages the broker holds (purging them: every test starts from an empty queue)."""
    return await capped.broker.purge(queue)


async def test_too_deep_an_argument_names_the_depth_limit_and_the_task() -> None:
    async with capped:
        await store.send(nested(200))  # deep, but within the limit
        assert await waiting() == 1
        with pytest.raises(SerializationError) as info:
            await store.send(nested(300))
        assert type(info.value) is SerializationError
        text = str(info.value)
        assert "nesting depth limit (254 levels" in text
        assert "args[0]" in text
        assert repr(store.name) in text
        assert "not JSON-serializable" not in text
        loop: dict[str, object] = {}
        loop["self"] = loop
        with pytest.raises(SerializationError, match=r"nesting depth limit.*contains itself"):
            await store.apply_async(kwargs={"blob": loop})
        assert await waiting() == 0


async def test_a_message_over_max_message_size_is_refused_and_nothing_is_sent() -> None:
    big = "x" * 4096
    async with capped:
        sends: dict[str, Callable[[], Awaitable[object]]] = {
            "send": lambda: store.send(big),
            "apply_async": lambda: store.apply_async(args=(big,), countdown=5),
            "send_task": lambda: capped.send_task(store.name, args=(big,), queue="default"),
            "send_batch": lambda: store.send_batch([("small",), (big,), ("small",)]),
            "group": lambda: group(store.s("small"), store.s(big)).send(),
            "chain": lambda: (store.si("small") | store.si(big)).send(),
        }
        for how, send in sends.items():
            with pytest.raises(MessageTooLarge) as info:
                await send()
            assert info.value.task == store.name, how
            assert info.value.limit == 2048
            assert info.value.size > 4096
            assert f"{info.value.size} bytes" in str(info.value)
            assert repr(store.name) in str(info.value)
            assert await waiting() == 0, how
        assert isinstance(info.value, SerializationError)


async def test_max_message_size_zero_means_no_cap() -> None:
    uncapped = App("api-e2e-uncapped", broker="memory://", backend="memory://", max_message_size=0)

    @uncapped.task
    async def take(blob: str) -> None:
        return None

    async with uncapped:
        await take.send("x" * 11 * 1024 * 1024)  # over the 10 MiB default
        assert await uncapped.broker.purge("default") == 1


# --- one API: the same errors on every path -------------------------------------------------


async def test_group_get_timeout_is_result_timeout_like_async_result() -> None:
    async with app:  # no worker: nothing ever finishes
        single = await still_alive.send()
        with pytest.raises(ResultTimeout):
            await single.get(timeout=0.05)
        gr = await group(still_alive.s(), still_alive.s()).send()
        with pytest.raises(ResultTimeout) as info:
            await gr.get(timeout=0.05)
        assert gr.id in str(info.value)
        assert "2 of 2" in str(info.value)


async def test_unknown_call_option_is_one_error_on_every_path() -> None:
    async with app:
        errors: list[ConfigurationError] = []
        for send in (
            lambda: still_alive.apply_async(bogus=1),  # type: ignore[call-arg]
            lambda: app.send_task(still_alive.name, bogus=1),  # type: ignore[call-arg]
            lambda: still_alive.s().set(bogus=1).send(),
            lambda: group(still_alive.s().set(bogus=1)).send(),
        ):
            with pytest.raises(ConfigurationError) as info:
                await send()
            errors.append(info.value)
        assert all("unknown call option(s) bogus on " in str(e) for e in errors)
        assert await app.broker.purge("default") == 0  # nothing was sent


async def test_send_batch_takes_checked_calls_and_tuples() -> None:
    async with app, start_worker(app):
        rs = await exits_async.send_batch([exits_async.call(4), (5,), exits_async.call(code=6)])
        for r, code in zip(rs, (4, 5, 6), strict=True):
            with pytest.raises(TaskError, match=f"SystemExit: {code}"):
                await r.get(timeout=TIMEOUT)
