"""A delivery whose channel is closing counts as stale.

aiormq closes a channel whose RPC was cancelled (a worker told to stop while it declared or
consumed a key queue) and refuses every frame on it from then on, though `is_closed` stays
False until the server confirms the close. An ack of its deliveries is refused and the server
takes them back: a delivery handed out then, or copied back to its queue, ran twice.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import aiormq
import pytest

from aiotask.brokers._rabbitmq_delivery import Incoming, Unsettled, stale

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel, DeliveredMessage

pytestmark = pytest.mark.amqp


async def _delivery(channel: AbstractChannel, queue: str) -> DeliveredMessage:
    got: asyncio.Future[DeliveredMessage] = asyncio.get_running_loop().create_future()

    async def on_message(message: DeliveredMessage) -> None:
        if not got.done():
            got.set_result(message)

    await channel.basic_publish(b"x", routing_key=queue)
    await channel.basic_consume(queue, on_message)
    return await asyncio.wait_for(got, 10)


async def test_a_delivery_of_a_closing_channel_is_stale(amqp_url: str) -> None:
    conn = await aiormq.connect(amqp_url)
    queue = f"aiotask-test-closing-{uuid.uuid4().hex}"
    caught = 0
    try:
        admin = await conn.channel()
        await admin.queue_declare(queue, auto_delete=False)
        for turns in range(1, 6):  # cancel the RPC at a few points once its frame is out
            channel = await conn.channel()
            msg = Incoming(await _delivery(channel, queue), Unsettled())
            assert not stale(msg)
            rpc = asyncio.ensure_future(channel.queue_declare(queue, passive=True))
            for _ in range(turns):
                await asyncio.sleep(0)
            rpc.cancel()
            try:
                await rpc
            except asyncio.CancelledError:
                pass
            else:  # answered before the cancel landed: the channel stays open
                assert not stale(msg)
                await channel.close()
                continue
            # stale() must say exactly whether the channel still takes the ack
            if stale(msg):
                caught += not channel.is_closed  # closing: the server has not confirmed it
                with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
                    await channel.basic_ack(msg.delivery_tag)
            else:  # cancelled before its frame went out: the channel stays open
                await channel.basic_ack(msg.delivery_tag)
                await channel.close()
            async with asyncio.timeout(10):
                while not channel.is_closed:
                    await asyncio.sleep(0.01)
            assert stale(msg)
        assert caught, "no cancel left a channel closing: the window was never exercised"
    finally:
        cleanup = await conn.channel()
        await cleanup.queue_delete(queue)
        await conn.close()
