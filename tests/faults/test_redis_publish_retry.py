"""A publish retried after a timeout never adds its messages twice (private, paused server).

The server is stopped (SIGSTOP) while a batch is in flight: the first attempt's bytes sit in
the server's socket buffer, the client times out and sends the batch again on a new
connection, possibly more than once. When the server resumes it runs every attempt; the
batch's marker makes all but the first a no-op, whichever order they run in.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from typing import TYPE_CHECKING

import pytest

from aiotask.brokers import Delivery, Outgoing
from aiotask.brokers.redis_streams import RedisStreamsBroker
from aiotask.settings import Settings
from tests.conftest import REQUIRE_SERVICES
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)  # never leave it stopped
        server.kill()


async def test_publish_retried_across_a_paused_server_adds_each_message_once(
    server: PrivateRedis,
) -> None:
    assert server.proc is not None
    conf = Settings(broker_url=server.url, key_prefix="p", broker_unreachable_timeout=30.0)
    broker = RedisStreamsBroker(server.url, conf, "app")
    await broker.connect()
    broker.op_timeout = 0.3  # the 10 s guard, shortened: the pause outlasts several attempts
    batch = [
        Outgoing(queue="q", body=b"x" * 100_000, message_id=f"m{i}", priority=p)
        for i, p in enumerate((0, 5, 9))
    ]
    try:
        os.kill(server.proc.pid, signal.SIGSTOP)
        publishing = asyncio.create_task(broker.publish(batch))
        await asyncio.sleep(1.5)  # the first attempt timed out; retries are piling up
        assert not publishing.done()
        os.kill(server.proc.pid, signal.SIGCONT)
        async with asyncio.timeout(20):
            await publishing
        got: list[Delivery] = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                got += await broker.receive(["q"], 10)
        await asyncio.sleep(0.2)
        got += await asyncio.wait_for(_drain(broker), 2.0)
        assert sorted(d.message_id for d in got) == ["m0", "m1", "m2"]
        await broker.ack(got)
    finally:
        await broker.close()


async def _drain(broker: RedisStreamsBroker) -> list[Delivery]:
    """Whatever else is queued (a duplicate would show up here)."""
    try:
        async with asyncio.timeout(0.5):
            return list(await broker.receive(["q"], 10))
    except TimeoutError:
        return []
