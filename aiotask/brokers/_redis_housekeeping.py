"""Housekeeping of the Streams broker before each read, in one round trip: ack wake-ups, move
due delayed messages, and take over entries whose lease lapsed (RECLAIM) or whose consumer
stopped beating (TAKEOVER). Functions over the broker, as in _redis_cluster_reads."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from aiotask._time import monotonic, now
from aiotask.brokers import _redis_fair as fair
from aiotask.brokers._common import DEAD_LETTER_CAP, text
from aiotask.brokers.base import Delivery

if TYPE_CHECKING:
    from aiotask.brokers.redis_streams import Command, RedisStreamsBroker, _Keys

logger = logging.getLogger("aiotask.brokers.redis_streams")  # where these warnings always were
#: Delayed messages one mover call promotes; more are moved by the next receive.
MOVE_BATCH = 1000
DEAD_MAXLEN = DEAD_LETTER_CAP


async def run(b: RedisStreamsBroker, qkeys: list[_Keys], limit: int) -> list[Delivery]:
    """Ack wake-ups, move due delayed messages and, when due, take over lost consumers'
    entries (heartbeat lapsed: every worker_lost_after/3) and idle ones (lease lapsed:
    every visibility_timeout/2). One round trip."""
    wall, mono = now(), monotonic()
    reclaim = mono >= b._next_reclaim
    takeover = mono >= b._next_takeover
    cmds: list[Command] = []
    for stream, ids in b._markers.items():
        cmds += [("XACK", stream, b._group, *ids), ("XDEL", stream, *ids)]
    markers = len(cmds)
    movers = [k for k in qkeys if reclaim or b._next_due.get(k.queue, 0.0) <= wall]
    sha = b._sha("MOVE_DUE")
    cmds += [
        ("EVALSHA", sha, 4, k.delayed, *k.streams, int(wall * 1000), MOVE_BATCH) for k in movers
    ]
    claims = [(k, s) for k in qkeys for s in k.streams] if reclaim else []
    sha = b._sha("RECLAIM")
    who = (b._group, b._consumer, b._lease_ms, limit, b._max_deliveries)
    fixed = (*who, DEAD_MAXLEN, b._prune_ms)
    cmds += [
        ("EVALSHA", sha, 2, s, k.dead, *fixed, k.queue, wall, _cursor(b, s), *b._reason)
        for k, s in claims
    ]
    fair_claims = fair.reclaim_commands(b, qkeys, limit) if reclaim else []
    cmds += fair_claims  # fairness: the keyed streams' lapsed leases
    takers = qkeys if takeover else []
    # the keyed streams' takeover first: TAKEOVER forgets a drained lost consumer
    fair_takes = fair.takeover_commands(b, takers, limit)
    cmds += fair_takes
    sha = b._sha("TAKEOVER")
    who = (b._group, b._consumer, limit, b._max_deliveries, DEAD_MAXLEN)
    cmds += [
        ("EVALSHA", sha, 5, k.alive, k.dead, *k.streams, *who, k.queue, wall, *b._reason)
        for k in takers
    ]
    if not cmds:
        return []
    results = await b._run(cmds, ignore=("NOGROUP",))
    b._markers.clear()
    for k, head in zip(movers, results[markers:], strict=False):
        b._next_due[k.queue] = float(head) / 1000 if head is not None else math.inf
    if reclaim:
        b._next_reclaim = mono + b._reclaim_every
    done = markers + len(movers)
    got = _claimed(b, claims, results[done : done + len(claims)])
    done += len(claims)
    got += fair.claimed(b, qkeys if reclaim else [], results[done : done + len(fair_claims)])
    done += len(fair_claims)
    if takeover:
        taken = results[done : done + len(fair_takes)]
        done += len(fair_takes)
        got += _taken(b, takers, results[done:], mono, taken)
    return got


def _cursor(b: RedisStreamsBroker, stream: str) -> bytes | str:
    return b._cursors.get(stream, "0-0")


def _claimed(
    b: RedisStreamsBroker, claims: list[tuple[_Keys, str]], results: list[Any]
) -> list[Delivery]:
    got: list[Delivery] = []
    for (k, stream), claimed in zip(claims, results, strict=True):
        if isinstance(claimed, Exception):  # NOGROUP: the server lost the group
            b._ready.clear()
            continue
        b._cursors[stream] = claimed[0]  # resume the PEL scan where it stopped
        for entry_id, mid, body, count in claimed[1]:
            got.append(Delivery(body, k.queue, text(mid), int(count), (stream, entry_id)))
    if got:
        logger.warning("took over %d message(s) whose lease lapsed", len(got))
    return got


def _taken(
    b: RedisStreamsBroker,
    takers: list[_Keys],
    results: list[Any],
    mono: float,
    keyed: list[Any],
) -> list[Delivery]:
    got: list[Delivery] = []
    delay = b._takeover_every
    for reply in keyed:  # fairness: TAKEOVER_FAIR's {more, entries}
        if not isinstance(reply, Exception) and reply[0]:
            delay = 0.0
    got += fair.claimed(b, takers, [r if isinstance(r, Exception) else r[1] for r in keyed])
    for k, reply in zip(takers, results, strict=True):
        if isinstance(reply, Exception):  # NOGROUP: the server lost the group
            b._ready.clear()
            continue
        if reply[0]:  # a lost consumer still owns entries: look again on the next receive
            delay = 0.0
        elif int(reply[2]) >= 0:  # look right when the next heartbeat would lapse
            delay = min(delay, int(reply[2]) / 1000 + 0.01)
        for band, entry_id, mid, body, count in reply[1]:
            stream = k.streams[int(band)]
            got.append(Delivery(body, k.queue, text(mid), int(count), (stream, entry_id)))
    b._next_takeover = mono + delay
    if got:
        logger.warning(
            "took over %d message(s) of a lost consumer (no heartbeat for %gs)",
            len(got),
            b._lost_ms / 1000,
        )
    return got
