"""The waiter bookkeeping shared by the SQLite and PostgreSQL backends (backends/_waiters.py):
every way a wait ends removes its future, and the reader sees exactly the ids still waited."""

from __future__ import annotations

import asyncio

import pytest

from aiotask.backends._waiters import Waiters
from aiotask.exceptions import BrokerConnectionError, ResultTimeout


async def test_deliver_answers_every_waiter_of_an_id_and_only_them() -> None:
    waiters = Waiters()
    woken: list[int] = []
    a1 = asyncio.create_task(waiters.wait("a", 5, lambda: woken.append(1)))
    a2 = asyncio.create_task(waiters.wait("a", 5, lambda: woken.append(2)))
    b = asyncio.create_task(waiters.wait("b", 5, lambda: None))
    await asyncio.sleep(0)
    assert woken == [1, 2]  # `added` runs once the future is registered
    assert sorted(waiters) == ["a", "b"] and len(waiters) == 2
    assert waiters.deliver([("a", b"rec")])
    assert await a1 == await a2 == b"rec"
    assert list(waiters) == ["b"] and "a" not in waiters
    assert not waiters.deliver([])
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert not waiters  # a cancelled wait leaves nothing behind


async def test_a_timeout_removes_its_future_and_says_which_task() -> None:
    waiters = Waiters()
    with pytest.raises(ResultTimeout, match=r"task t1 not ready after 0\.01s"):
        await waiters.wait("t1", 0.01, lambda: None)
    assert not waiters and "t1" not in waiters


async def test_fail_raises_in_every_pending_wait() -> None:
    waiters = Waiters()
    pending = [asyncio.create_task(waiters.wait(t, None, lambda: None)) for t in ("x", "x", "y")]
    await asyncio.sleep(0)
    waiters.fail("result backend closed during wait")
    for task in pending:
        with pytest.raises(BrokerConnectionError, match="closed during wait"):
            await task
    assert not waiters
