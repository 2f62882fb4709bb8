"""The worker's loops under faults: a crashing receive, a failing heartbeat; options that must
not leak into the App; rate limits of tasks registered after the worker started (memory://)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiotask import App
from aiotask.brokers.memory import MemoryBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.testing import start_worker
from aiotask.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pytest

    from aiotask.brokers.base import Delivery
    from aiotask.settings import Settings


class FaultyBroker(MemoryBroker):
    """memory:// whose receive raises `failures` times, and whose heartbeat can fail."""

    def __init__(self, settings: Settings, failures: Sequence[Exception] = ()) -> None:
        super().__init__(settings)
        self.failures = list(failures)
        self.beats = 0
        self.beat_error: Exception | None = None

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if self.failures:
            raise self.failures.pop(0)
        return await super().receive(queues, limit)

    async def heartbeat(self) -> None:
        self.beats += 1
        if self.beat_error is not None:
            raise self.beat_error


def make_app(**settings: Any) -> tuple[App, FaultyBroker]:
    app = App("loops", broker="memory://", backend="memory://", **settings)
    broker = app._broker = FaultyBroker(app.conf)
    return app, broker


async def test_consumer_restarts_after_receive_raises(caplog: pytest.LogCaptureFixture) -> None:
    app, broker = make_app()

    @app.task(name="loops.add")
    async def add(x: int, y: int) -> int:
        return x + y

    broker.failures = [RuntimeError("broken entry"), KeyError("twice")]
    with caplog.at_level(logging.CRITICAL, logger="aiotask.worker"):
        async with start_worker(app) as worker:
            r = await add.send(2, 3)
            assert await r.get(timeout=10) == 5
            assert worker.shutdown.phase.value == "running"
    crashes = [r for r in caplog.records if "crashed; restarting" in r.getMessage()]
    assert [r.levelno for r in crashes] == [logging.CRITICAL] * 2
    assert "broken entry" in crashes[0].getMessage()


async def test_a_broker_that_gave_up_stops_the_worker_non_zero() -> None:
    app, broker = make_app()
    broker.failures = [BrokerConnectionError("unreachable for 60s")]
    worker = Worker(app)
    assert await asyncio.wait_for(worker.run(), 10) == 1


async def test_heartbeat_first_beat_before_consuming_and_survives_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, broker = make_app(worker_heartbeat_interval=0.05, worker_lost_after=1.0)
    seen_at_ready = -1

    @app.task(name="loops.beats")
    async def beats() -> int:
        return broker.beats

    with caplog.at_level(logging.WARNING, logger="aiotask.worker"):
        async with start_worker(app):
            seen_at_ready = await (await beats.send()).get(timeout=5)
            broker.beat_error = ConnectionError("server away")
            failing_from = broker.beats
            await asyncio.sleep(0.3)
            assert broker.beats >= failing_from + 2  # the loop kept beating through errors
            broker.beat_error = None
            r = await beats.send()
            assert await r.get(timeout=5) > failing_from
    assert seen_at_ready >= 1  # the first beat came before the first message was taken
    assert any("heartbeat failed" in r.getMessage() for r in caplog.records)


async def test_worker_options_do_not_leak_into_the_app() -> None:
    app, _ = make_app(concurrency=4)
    before = app.conf
    async with start_worker(app, concurrency=2, prefetch=7) as worker:
        assert (worker.concurrency, worker.prefetch) == (2, 7)
    assert app.conf is before
    async with start_worker(app) as second:
        assert (second.concurrency, second.prefetch) == (4, 4)


async def test_rate_limit_of_a_task_registered_after_the_worker_started() -> None:
    app, _ = make_app()
    starts: list[float] = []
    async with start_worker(app, concurrency=4):

        @app.task(name="loops.late", rate_limit="4/s")
        async def late(i: int) -> int:
            starts.append(time.monotonic())
            return i

        results = await late.send_batch([(i,) for i in range(5)])
        assert [await r.get(timeout=10) for r in results] == list(range(5))
    # one token at once, then one every 0.25 s: four waits at least
    assert starts[-1] - starts[0] >= 4 * 0.25 * 0.9
