"""Worker metrics in-process: queue wait from the send time (SendTime) or from receipt,
broker reconnects counted, samples built at scrape time."""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiotask import App
from aiotask.exceptions import BrokerConnectionError
from aiotask.metrics import SENT_HEADER, SendTime, WorkerMetrics
from aiotask.testing import start_worker
from tests.conftest import REQUIRE_SERVICES
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from pathlib import Path


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def make_app(*middleware: SendTime) -> App:
    app = App("m", broker="memory://", backend="memory://", middleware=list(middleware))

    @app.task(name="m.noop")
    async def noop() -> None:
        return None

    return app


async def test_queue_wait_counts_from_the_send_time() -> None:
    app = make_app(SendTime())
    metrics = WorkerMetrics()
    async with app:
        r = await app.send_task("m.noop")
        await asyncio.sleep(0.3)  # waiting in the queue: no worker yet
        async with start_worker(app, probe=metrics):
            await r.get(timeout=10)
    metrics.close()
    got = samples(metrics)
    labels = (("queue", "default"), ("task", "m.noop"))
    assert got[("aiotask_queue_wait_seconds_count", labels)] == 1
    assert got[("aiotask_queue_wait_seconds_sum", labels)] >= 0.3
    low = tuple(sorted((*labels, ("le", "0.1"))))
    assert got[("aiotask_queue_wait_seconds_bucket", low)] == 0
    assert got[("aiotask_tasks_total", (labels[0], ("state", "succeeded"), labels[1]))] == 1


async def test_send_time_header_is_stamped_on_send() -> None:
    app = make_app(SendTime())
    seen: list[dict[str, str]] = []

    @app.task(name="m.headers", bind=True)
    async def headers(ctx) -> None:
        seen.append(dict(ctx.headers))

    async with app, start_worker(app):
        await (await headers.send()).get(timeout=10)
    assert float(seen[0][SENT_HEADER]) > 0


@pytest.mark.redis
async def test_broker_reconnects_are_counted(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    app = App("m", broker=server.url, backend=None, broker_unreachable_timeout=0.5)
    metrics = WorkerMetrics()
    try:
        async with app:
            await app.send_task("m.noop")  # connected and working
            assert ("aiotask_broker_reconnects_total", (("server", "Redis"),)) not in samples(
                metrics
            )
            server.kill()
            with pytest.raises(BrokerConnectionError):
                await app.send_task("m.noop")
    finally:
        metrics.close()
        server.kill()
    assert samples(metrics)[("aiotask_broker_reconnects_total", (("server", "Redis"),))] == 1
