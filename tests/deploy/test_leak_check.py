"""The end-of-session leak check finds what a test leaves on the shared servers, and only that."""

from __future__ import annotations

import aio_pika
from redis.asyncio import Redis

from tests import leaks


async def test_finds_a_left_redis_key_of_this_sessions_namespace(
    redis_url: str, namespace: str
) -> None:
    client = Redis.from_url(redis_url)
    other = "t" + "0" * 12  # a namespace of another session: never ours to report
    try:
        await client.set(f"{namespace}:left", 1)
        await client.set(f"aiotask:{{{namespace}-q}}:x", 1)  # the namespace inside a name
        found = leaks.redis_keys(redis_url, {namespace, other})
        assert sorted(found) == sorted([f"{namespace}:left", f"aiotask:{{{namespace}-q}}:x"])
    finally:
        await client.delete(f"{namespace}:left", f"aiotask:{{{namespace}-q}}:x")
        await client.aclose()
    assert leaks.redis_keys(redis_url, {namespace}) == []


async def test_finds_a_left_rabbitmq_queue(amqp_url: str, namespace: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{namespace}.default", durable=False)
        try:
            found = await _in_thread(amqp_url, namespace)
            assert found == [f"{namespace}.default"]
            passive = await leaks._passive(amqp_url, {namespace})
            assert passive == [f"{namespace}.default"]
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    assert await _in_thread(amqp_url, namespace) == []


async def _in_thread(url: str, namespace: str) -> list[str]:
    import asyncio

    return await asyncio.to_thread(leaks.amqp_queues, url, {namespace})
