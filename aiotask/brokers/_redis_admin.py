"""Administration of brokers/redis_streams.py: purge, counts, queue discovery, dead letters.

Functions over the broker (as in _redis_housekeeping), so the broker class keeps thin methods.
Dead-letter entries carry `message_id`, `body`, `reason`, `queue` and `time` fields (see
redis_streams._bury and the Lua scripts).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from aiotask.brokers import _redis_fair as fair
from aiotask.brokers import _redis_lua as lua
from aiotask.brokers._common import text
from aiotask.brokers.base import DeadLetter, QueueStats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask._redis.client import Client
    from aiotask.brokers.redis_streams import Command, RedisStreamsBroker, _Keys

#: Undelivered entries per band that QUEUE_STATS looks at to leave wake-ups out of `ready`.
STATS_SCAN_CAP = 1000
#: Key suffixes that make a queue known (not `consumers` or publish markers).
_QUEUE_KEYS = frozenset({"s0", "s1", "s2", "delayed", "dead", "fkeys"})
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


async def purge(b: RedisStreamsBroker, k: _Keys) -> int:
    """Drop every message of the queue, delayed and keyed ones included; returns how many."""
    cmds: list[Command] = [("XLEN", s) for s in k.streams]
    cmds += [("ZCARD", k.delayed)]
    cmds += [("XTRIM", s, "MAXLEN", 0) for s in k.streams]
    cmds += [("DEL", k.delayed), fair.purge_command(k)]
    results = await b._retrying(lambda: b._pipeline(cmds, transaction=True))
    return sum(int(r) for r in results[:4]) + int(results[-1])


async def dead_letters(b: RedisStreamsBroker, k: _Keys, limit: int) -> list[DeadLetter]:
    cmd = ("XRANGE", k.dead, "-", "+", "COUNT", limit)
    [entries] = await b._retrying(lambda: b._run([cmd]))
    return [dead_letter(k.queue, entry_id, fields) for entry_id, fields in entries]


async def delete_dead_letters(b: RedisStreamsBroker, k: _Keys, dead: Sequence[DeadLetter]) -> int:
    """XDEL these entries of the dead-letter stream (idempotent: a retry deletes nothing
    twice); returns how many were still there."""
    ids = [d.token for d in dead if isinstance(d.token, bytes)]
    if not ids:
        return 0
    cmd = ("XDEL", k.dead, *ids)
    [count] = await b._retrying(lambda: b._run([cmd]))
    return int(count)


async def queue_stats(b: RedisStreamsBroker, keys: list[_Keys]) -> list[QueueStats]:
    """One script per queue (and per keyed queue), one round trip."""
    cmds = [stats_command(k.streams, k.delayed, k.dead, b._group) for k in keys]
    cmds += fair.stats_commands(keys, b._group)
    replies = await b._retrying(lambda: b._run(cmds)) if cmds else []
    own, keyed = replies[: len(keys)], replies[len(keys) :]
    return [fair.with_stats(stats(k.queue, r), f) for k, r, f in zip(keys, own, keyed, strict=True)]


def stats_command(streams: Sequence[str], delayed: str, dead: str, group: str) -> Command:
    return ("EVAL", lua.QUEUE_STATS, 5, *streams, delayed, dead, group, STATS_SCAN_CAP)


def stats(queue: str, reply: Sequence[Any]) -> QueueStats:
    ready, delayed, leased, dead = (int(v) for v in reply)
    return QueueStats(queue, ready, delayed, leased, dead)


def dead_letter(queue: str, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    mid, reason = fields.get(b"message_id", b""), fields.get(b"reason", b"")
    at = fields.get(b"time")
    try:
        died_at = float(at) if at is not None else None
    except ValueError:
        died_at = None
    body = fields.get(b"body", b"")
    return DeadLetter(text(mid), body, text(reason), queue, died_at, entry_id)


async def scan_queues(client: Client, prefix: str, timeout: float) -> list[str]:
    """Every queue with a band stream, delayed set or dead-letter stream under `prefix`."""
    found: set[str] = set()
    async with asyncio.timeout(timeout):
        async for key in client.scan_iter(match=queue_match(prefix), count=1000):
            queue = queue_of(prefix, key)
            if queue is not None:
                found.add(queue)
    return sorted(found)


def queue_match(prefix: str) -> str:
    """The SCAN pattern of every per-queue key under `prefix` (glob characters escaped)."""
    return _GLOB_SPECIAL.sub(r"\\\1", prefix) + ":{*}:*"


def queue_of(prefix: str, key: bytes | str) -> str | None:
    """`prefix:{queue}:suffix` -> queue, for the suffixes a queue has; else None."""
    name = text(key)
    head = prefix + ":{"
    if not name.startswith(head):
        return None
    queue, sep, suffix = name[len(head) :].rpartition("}:")
    return queue if sep and queue and suffix in _QUEUE_KEYS else None
