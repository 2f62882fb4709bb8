"""Administration of brokers/redis_streams.py: counts, queue discovery, dead letters by id.

Pure helpers plus paging loops over a `run` callable (the broker's retrying pipeline), so the
broker class keeps thin methods. Dead-letter entries carry `message_id`, `body`, `reason`,
`queue` and `time` fields (see redis_streams._bury and the Lua scripts).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiotask.brokers import _redis_lua as lua
from aiotask.brokers._common import text
from aiotask.brokers.base import DeadLetter, QueueStats

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    Command = tuple[Any, ...]
    Run = Callable[[list[Command]], Awaitable[list[Any]]]

#: Undelivered entries per band that QUEUE_STATS looks at to leave wake-ups out of `ready`.
STATS_SCAN_CAP = 1000
#: Dead-letter entries read per XRANGE page.
PAGE = 1000
#: Key suffixes that make a queue known (not `consumers` or publish markers).
_QUEUE_KEYS = frozenset({"s0", "s1", "s2", "delayed", "dead"})
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def stats_command(streams: Sequence[str], delayed: str, dead: str, group: str) -> Command:
    return ("EVAL", lua.QUEUE_STATS, 5, *streams, delayed, dead, group, STATS_SCAN_CAP)


def stats(queue: str, reply: Sequence[Any]) -> QueueStats:
    ready, delayed, leased, dead = (int(v) for v in reply)
    return QueueStats(queue, ready, delayed, leased, dead)


def dead_letter(queue: str, fields: dict[bytes, bytes]) -> DeadLetter:
    mid, reason = fields.get(b"message_id", b""), fields.get(b"reason", b"")
    at = fields.get(b"time")
    try:
        died_at = float(at) if at is not None else None
    except ValueError:
        died_at = None
    return DeadLetter(text(mid), fields.get(b"body", b""), text(reason), queue, died_at)


async def delete_dead(run: Run, dead: str, message_ids: Sequence[str]) -> int:
    """XDEL every entry of the dead-letter stream whose message_id is one of these.

    Pages through the stream (at most DEAD_LETTER_CAP entries); XDEL of an entry id is
    idempotent, so a retried or concurrent call deletes nothing twice.
    """
    wanted = {m.encode() for m in message_ids}
    start: bytes | str = "-"
    deleted = 0
    while True:
        [entries] = await run([("XRANGE", dead, start, "+", "COUNT", PAGE)])
        hits = [eid for eid, f in entries if f.get(b"message_id") in wanted]
        if hits:
            [count] = await run([("XDEL", dead, *hits)])
            deleted += int(count)
        if len(entries) < PAGE:
            return deleted
        start = b"(" + entries[-1][0]


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
