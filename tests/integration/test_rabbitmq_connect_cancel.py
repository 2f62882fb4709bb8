"""A RabbitMQ connection attempt cancelled midway (a worker told to stop while its consumer
connects) leaves nothing running: aio-pika's reconnect task survives cancellation until its
connection is closed, and kept the worker process from ever exiting."""

from __future__ import annotations

import asyncio
import gc

import pytest

from aiotask.brokers._rabbitmq_nodes import connect_node


def _reconnect_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and "connection_factory" in getattr(t.get_coro(), "__qualname__", "")
    ]


@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_cancelled_connect_leaves_no_reconnect_task(amqp_url: str, cancels: int) -> None:
    """Cancelled at every point of the attempt; with 2, a worker stopped twice in a row: the
    second cancel lands while the first one's clean-up waits for the attempt to end, which
    used to skip closing the connection."""
    for turns in range(0, 120, cancels * 2 - 1):
        attempt = asyncio.ensure_future(
            connect_node([amqp_url], 0, timeout=10, reconnect_interval=1.0)
        )
        for _ in range(turns):
            await asyncio.sleep(0)
        attempt.cancel()
        for _ in range(cancels - 1):
            for _ in range(2):  # the previous cancel has reached its clean-up
                await asyncio.sleep(0)
            attempt.cancel()
        try:
            conn = await attempt
        except asyncio.CancelledError:
            pass
        else:  # connected before the cancel landed: an ordinary connection
            await conn.close()
        async with asyncio.timeout(5):
            while _reconnect_tasks():
                await asyncio.sleep(0.01)
    # A half-made connection (aiormq's socket, reader and writer) left by a cancel shows as an
    # unclosed socket when collected: here, not in whichever test runs next.
    gc.collect()
    await asyncio.sleep(0.05)
    gc.collect()
