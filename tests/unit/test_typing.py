"""Static types users see: checked by `mypy --strict` (assert_type fails the type check, and an
unneeded `# type: ignore` fails it too: warn_unused_ignores), and run as plain tests."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import pytest

from aiotask import App, AsyncResult, GroupResult, chain, group
from aiotask.exceptions import ConfigurationError
from aiotask.middleware import Middleware
from aiotask.task import Call

app = App("typing", broker="memory://", backend="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def shout(word: str) -> str:
    return word.upper()


class Recorder(Middleware):
    async def startup(self, app: App) -> None:
        assert_type(app.conf.default_queue, str)


async def test_calling_a_task_locally_is_typed() -> None:
    coro = assert_type(add(1, 2), Coroutine[Any, Any, int])
    assert await coro == 3
    assert assert_type(shout("hi"), str) == "HI"
    with pytest.raises(TypeError):
        await add("1", 2)  # type: ignore[arg-type]


async def test_send_and_canvas_handles_are_typed() -> None:
    async with app:
        assert_type(await add.send(1, 2), AsyncResult[int])
        assert_type(await add.s(1, 2).send(), AsyncResult[Any])
        assert_type(await group(add.s(1, 2)).send(), GroupResult[Any])
        chained = await chain(add.s(1, 2), add.s(3)).send()
        assert_type(chained, AsyncResult[Any] | GroupResult[Any])
        assert_type(await app.send_task("typing.add", args=(1, 2), countdown=1), AsyncResult[Any])
        with pytest.raises(ConfigurationError):
            await app.send_task("typing.add", bogus=1)  # type: ignore[call-arg]
        await app.broker.purge("default")


async def test_send_batch_calls_are_checked() -> None:
    assert add.call(1, 2) == Call((1, 2), {})
    add.call("1", 2)  # type: ignore[arg-type]
    async with app:
        await app.broker.purge("default")
        results = await add.send_batch([add.call(1, 2), add.call(x=1, y=2), (1, 2)])
        assert_type(results, list[AsyncResult[int]])
        await add.send_batch([shout.call("x")])  # type: ignore[list-item]
        assert await app.broker.purge("default") == 4
