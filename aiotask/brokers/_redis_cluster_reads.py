"""Reads of the Streams broker on a Redis Cluster (docs/redis-cluster.md).

A queue's keys share one hash tag, so each queue lives in one slot, but queues spread over
shards: neither the strict-priority read script nor one blocking XREADGROUP may span them.
So the look is one READ_BANDS call per queue (one pipeline; redis-py sends each to its
node), and the blocking read is one XREADGROUP per queue on its own connection to the
queue's primary. Reads still blocking when another queue delivered are kept and collected by
the next receive, so nothing they deliver waits for a lease to lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Any

from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiotask._redis import cluster
from aiotask.brokers import _redis_fair as fair

if TYPE_CHECKING:
    from aiotask.brokers.base import Delivery
    from aiotask.brokers.redis_streams import RedisStreamsBroker, _Keys

#: Replies that say "this node no longer serves the slot": find the owner again and retry.
_MOVING = (AskError, ClusterDownError, TryAgainError)


async def receive(
    broker: RedisStreamsBroker,
    qkeys: list[_Keys],
    limit: int,
    claimed: list[Delivery],
    wait: float,
) -> list[Delivery]:
    """Strict priority within each queue, queues in the order given; block when all empty."""
    looks = [fair.read_command(broker, [k], limit) for k in qkeys]  # round-robin where keyed
    got: list[Delivery] = []
    for reply in await broker._run(looks, ignore=("NOGROUP",)):
        if isinstance(reply, Exception):  # the group vanished (a failover without it)
            broker._ready.clear()
        elif reply:
            got += await broker._parse(reply)
    if got or claimed:
        return broker._cap(got + claimed, limit)
    for k in qkeys:
        if k.queue not in broker._blocking:
            broker._blocking[k.queue] = asyncio.ensure_future(_block(broker, k, wait))
    await asyncio.wait([broker._blocking[k.queue] for k in qkeys], return_when="FIRST_COMPLETED")
    return broker._cap(await _collect(broker, qkeys) + claimed, limit)


async def _collect(broker: RedisStreamsBroker, qkeys: list[_Keys]) -> list[Delivery]:
    """What the finished blocking reads delivered; the first error when none delivered."""
    got: list[Delivery] = []
    error: BaseException | None = None
    for k in qkeys:
        read = broker._blocking[k.queue]
        if not read.done():
            continue
        del broker._blocking[k.queue]
        exc = read.exception()
        if exc is not None:
            error = error or exc
        elif read.result():
            got += await broker._parse(read.result())
    if error is not None and not got:
        raise error
    return got


async def _block(broker: RedisStreamsBroker, k: _Keys, wait: float) -> Any:
    """XREADGROUP BLOCK on one queue's bands (high first), on a connection to its primary."""
    client = broker._client()
    if not cluster.is_cluster(client):  # pragma: no cover - receive() checked it
        raise TypeError("cluster reads need a RedisCluster client")
    conn = broker._readers.get(k.queue)
    streams = list(reversed(k.streams))
    args = ("XREADGROUP", "GROUP", broker._group, broker._consumer, "COUNT", 1)
    block = ("BLOCK", math.ceil(wait * 1000), "STREAMS", *streams, *[">"] * len(streams))
    try:
        if conn is None:
            conn = broker._readers[k.queue] = await cluster.connection_for_key(client, streams[0])
        async with asyncio.timeout(wait + 10.0):
            await conn.send_command(*args, *block)
            return await conn.read_response(timeout=math.inf)
    except ResponseError as exc:
        if "NOGROUP" in str(exc):
            broker._ready.clear()
            return None
        await _drop(broker, k.queue)
        if isinstance(exc, _MOVING) or str(exc).startswith(("MOVED", "READONLY", "LOADING")):
            with contextlib.suppress(Exception):  # re-read the slot map before the retry
                await client.nodes_manager.initialize()
            raise RedisConnectionError(f"slot of queue {k.queue!r} moved: {exc}") from exc
        raise
    except TimeoutError as exc:
        await _drop(broker, k.queue)
        raise RedisTimeoutError(f"no reply to XREADGROUP within {wait + 10.0:g}s") from exc
    except BaseException:
        await _drop(broker, k.queue)
        raise


async def _drop(broker: RedisStreamsBroker, queue: str) -> None:
    conn = broker._readers.pop(queue, None)
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.disconnect()


async def stop(broker: RedisStreamsBroker) -> None:
    """Cancel pending blocking reads and close their connections (what they delivered stays
    in this consumer's PEL, which close() has just handed back or the lease recovers)."""
    reads = list(broker._blocking.values())
    broker._blocking.clear()
    for read in reads:
        read.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    for queue in list(broker._readers):
        await _drop(broker, queue)
