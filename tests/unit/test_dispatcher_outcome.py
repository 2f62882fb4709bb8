"""The dispatcher reads a finished task's settlement without result()'s call only when
result() would just return it (aiotask/worker/consumer.py, Dispatcher._outcome)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiotask.brokers.base import Delivery
from aiotask.worker._eager import start
from aiotask.worker.consumer import Dispatcher
from aiotask.worker.outcome import Settlement


def _dispatcher() -> Any:
    """The parts of a Dispatcher that _outcome touches."""
    added: list[Settlement] = []
    errors: list[BaseException] = []
    fake = SimpleNamespace(
        gates=SimpleNamespace(slots=None),
        settler=SimpleNamespace(add=added.append),
        failed=0,
        processed=0,
        added=added,
        errors=errors,
    )
    fake._internal_error = lambda _delivery, exc: errors.append(exc)
    return fake


async def test_a_finished_task_hands_its_settlement_to_the_settler() -> None:
    delivery = Delivery(b"", "q", "m1", 1)
    settlement = Settlement(delivery)

    async def done() -> Settlement:
        return settlement

    fake = _dispatcher()
    Dispatcher._outcome(fake, delivery, start(done(), asyncio.get_running_loop()))
    assert fake.added == [settlement] and fake.processed == 1 and not fake.errors


async def test_a_cancelled_or_failed_task_is_not_read_as_a_settlement() -> None:
    delivery = Delivery(b"", "q", "m1", 1)

    async def cancelled() -> Settlement:
        raise asyncio.CancelledError

    async def failed() -> Settlement:
        raise ValueError("internal")

    fake = _dispatcher()
    Dispatcher._outcome(fake, delivery, start(cancelled(), asyncio.get_running_loop()))
    assert fake.added == [] and fake.processed == 0  # a cold shutdown's: handed back, not settled
    Dispatcher._outcome(fake, delivery, start(failed(), asyncio.get_running_loop()))
    assert fake.added == [] and fake.processed == 1
    assert [type(e) for e in fake.errors] == [ValueError]
