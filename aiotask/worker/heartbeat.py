"""Keep this worker's claims alive: the broker heartbeat and lease renewal, each on its own timer.

Both run beside the consumer so that busy tasks cannot starve them, and both survive a failed
call with a warning: a missed beat or renewal is retried at the next tick, and only a long
outage (worker_lost_after, visibility_timeout) lets another worker take over.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask._log import get_logger
from aiotask._time import monotonic

if TYPE_CHECKING:
    from aiotask.brokers.base import Broker
    from aiotask.worker.consumer import Dispatcher

log = get_logger(__name__)


async def beat(broker: Broker, timeout: float) -> bool:
    """One heartbeat; a failure (or a call hanging past `timeout`) is a warning, never fatal."""
    try:
        async with asyncio.timeout(timeout):
            await broker.heartbeat()
    except Exception as exc:
        log.warning("worker heartbeat failed (retried next interval): %r", exc)
        return False
    return True


async def heartbeat(broker: Broker, interval: float) -> None:
    """Beat every `interval` seconds, measured from the start of each beat (no drift)."""
    due = monotonic() + interval
    while True:
        await asyncio.sleep(max(due - monotonic(), 0.0))
        due = monotonic() + interval
        await beat(broker, interval)


async def renew_leases(broker: Broker, dispatcher: Dispatcher, interval: float) -> None:
    """Extend the lease of every delivery this worker holds (running, buffered or deferred)."""
    while True:
        await asyncio.sleep(interval)
        held = list(dispatcher.held)
        if not held:
            continue
        try:
            await broker.extend(held)
        except Exception as exc:
            log.warning("renewing %d leases failed: %s", len(held), exc)
