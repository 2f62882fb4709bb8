"""Fairness across keys on the Redis Streams broker: functions over the broker, as in
_redis_housekeeping (the layout and the scripts are described in _redis_fair_lua).

A keyed message (`Outgoing.fair_key`) goes to its own stream per (queue, key, band) instead
of the queue's band streams, and its key joins the queue's ring. Every receive's look (READ)
serves a queue with a ring round-robin, one message per key per turn, the queue's own
unkeyed streams taking a turn like a key; a queue without a ring is read exactly as before.
Leases, renewal (EXTEND works on any stream), hand-back, dead letters and delivery counts
work per keyed stream as on the queue's own streams; the keyed streams' lease reclaim and
heartbeat takeover run with the broker's own (in the same round trip).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from aiotask._time import now
from aiotask.brokers import _redis_fair_lua as lua
from aiotask.brokers._common import DEAD_LETTER_CAP, text
from aiotask.brokers.base import Delivery, QueueStats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.brokers.base import Outgoing
    from aiotask.brokers.redis_streams import Command, RedisStreamsBroker, _Keys

#: (immediate: band, key, message id, body ...; delayed: score, member ...) per queue
Parts = dict[str, tuple[list[Any], list[Any]]]


def ring_key(k: _Keys) -> str:
    return f"{k.base}:fring"


def fkeys_key(k: _Keys) -> str:
    return f"{k.base}:fkeys"


def add(b: RedisStreamsBroker, parts: Parts, out: Outgoing, band: int, wall: float) -> None:
    """Queue a keyed message for PUBLISH_FAIR (a delayed one packed for the delayed set)."""
    part = parts.get(out.queue)
    if part is None:
        part = parts[out.queue] = ([], [])
    if out.eta is not None and out.eta > wall:
        key, mid = out.fair_key.encode(), out.message_id.encode()
        member = b"%d%d:%s%d:%s%s" % (band + 3, len(key), key, len(mid), mid, out.body)
        part[1].extend((int(out.eta * 1000), member))
        b._next_due[out.queue] = min(b._next_due.get(out.queue, math.inf), out.eta)
        return
    part[0].extend((band, out.fair_key, out.message_id, out.body))


def publish_commands(
    b: RedisStreamsBroker, parts: Parts, batch_id: str, marker_ms: int
) -> list[Command]:
    sha = b._sha("PUBLISH_FAIR")
    cmds: list[Command] = []
    for queue, (ready, later) in parts.items():
        k = b._keys(queue)
        keys = (f"{k.base}:pubf:{batch_id}", k.streams[0], k.delayed)
        cmds.append(("EVALSHA", sha, 3, *keys, marker_ms, k.base, len(ready) // 4, *ready, *later))
    return cmds


def read_command(b: RedisStreamsBroker, qkeys: Sequence[_Keys], limit: int) -> Command:
    """The look of a receive: per queue its ring and its band streams, high band first."""
    keys = [key for k in qkeys for key in (ring_key(k), *reversed(k.streams))]
    return ("EVALSHA", b._sha("READ"), len(keys), *keys, b._group, b._consumer, limit)


def stream_of(b: RedisStreamsBroker, stream_key: bytes) -> tuple[str, str]:
    """(queue, stream) of a keyed stream named in a reply; remembered for settling and for
    the hand-back on close."""
    name = text(stream_key)
    for k in b._keys_cache.values():
        if name.startswith(f"{k.base}:f:"):
            b._stream_queue[stream_key] = found = (k.queue, name)
            b._fair_streams.add(name)
            return found
    raise KeyError(name)  # pragma: no cover - only streams of queues read are returned


def _key_of(k: _Keys, stream: str) -> str | None:
    """The fairness key of a keyed stream of queue `k` (None: one of the queue's own)."""
    head = f"{k.base}:f:"
    if not stream.startswith(head):
        return None
    return stream[len(head) : -3]  # `:s<band>` at the end


def ring_commands(b: RedisStreamsBroker, deliveries: Sequence[Delivery]) -> list[Command]:
    """After a hand-back (nack with requeue): put the keys of keyed entries back in the ring."""
    by: dict[str, tuple[_Keys, set[str]]] = {}
    for d in deliveries:
        k = b._keys(d.queue)
        key = _key_of(k, d.token[0]) if isinstance(d.token, tuple) else None
        if key is not None:
            by.setdefault(d.queue, (k, set()))[1].add(key)
    return _rings(b, by)


def _rings(b: RedisStreamsBroker, by: dict[str, tuple[_Keys, set[str]]]) -> list[Command]:
    sha = b._sha("RING")
    return [("EVALSHA", sha, 1, k.streams[0], k.base, *sorted(keys)) for k, keys in by.values()]


def hand_back_commands(b: RedisStreamsBroker) -> list[Command]:
    """close(): hand back what this consumer owns on the keyed streams it read, then ring."""
    sha = b._sha("HAND_BACK")
    cmds: list[Command] = []
    by: dict[str, tuple[_Keys, set[str]]] = {}
    for stream in sorted(b._fair_streams):
        queue, _ = b._stream_queue[stream.encode()]
        k = b._keys(queue)
        cmds.append(("EVALSHA", sha, 1, stream, b._group, b._consumer))
        key = _key_of(k, stream)
        if key is not None:
            by.setdefault(queue, (k, set()))[1].add(key)
    return cmds + _rings(b, by)


def reclaim_commands(b: RedisStreamsBroker, qkeys: Sequence[_Keys], limit: int) -> list[Command]:
    sha = b._sha("RECLAIM_FAIR")
    who = (b._group, b._consumer, b._lease_ms, limit, b._max_deliveries, DEAD_LETTER_CAP)
    return [
        ("EVALSHA", sha, 2, fkeys_key(k), k.dead, *who, k.queue, now(), *b._reason) for k in qkeys
    ]


def takeover_commands(b: RedisStreamsBroker, qkeys: Sequence[_Keys], limit: int) -> list[Command]:
    sha = b._sha("TAKEOVER_FAIR")
    who = (b._group, b._consumer, 0, limit, b._max_deliveries, DEAD_LETTER_CAP)
    return [
        ("EVALSHA", sha, 3, k.alive, k.dead, fkeys_key(k), *who, k.queue, now(), *b._reason)
        for k in qkeys
    ]


def claimed(
    b: RedisStreamsBroker, qkeys: Sequence[_Keys], results: Sequence[Any]
) -> list[Delivery]:
    """Deliveries from RECLAIM_FAIR replies (or TAKEOVER_FAIR's second element); their
    streams are remembered for the hand-back on close."""
    got: list[Delivery] = []
    for k, reply in zip(qkeys, results, strict=True):
        if isinstance(reply, Exception):
            continue
        for stream, entry_id, mid, body, count in reply:
            name = text(stream)
            b._stream_queue.setdefault(name.encode(), (k.queue, name))
            b._fair_streams.add(name)
            got.append(Delivery(body, k.queue, text(mid), int(count), (name, entry_id)))
    return got


def stats_commands(qkeys: Sequence[_Keys], group: str) -> list[Command]:
    return [("EVAL", lua.STATS_FAIR, 1, fkeys_key(k), group) for k in qkeys]


def with_stats(stats: QueueStats, reply: Sequence[Any]) -> QueueStats:
    ready, leased = (int(v) for v in reply)
    in_flight = None if stats.in_flight is None else stats.in_flight + leased
    return QueueStats(stats.queue, stats.ready + ready, stats.delayed, in_flight, stats.dead)


def purge_command(k: _Keys) -> Command:
    return ("EVAL", lua.PURGE_FAIR, 3, fkeys_key(k), ring_key(k), f"{k.base}:fset")
