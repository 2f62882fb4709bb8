"""Revocations known to this worker: loaded from the backend's tombstones, kept fresh by a reload.

The broadcast (worker/control.py) is the fast path; the periodic reload covers a broadcast
missed while the control channel was (re)subscribing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask._log import get_logger

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiotask.backends.base import ResultBackend

log = get_logger(__name__)

#: Revoked ids remembered in memory; past it the set restarts (the tombstones cover the rest).
REVOKED_MEMORY = 100_000
#: Seconds between full reloads of the tombstones.
REVOCATIONS_REFRESH = 10.0


def remember(revoked: set[str], ids: Iterable[str]) -> None:
    """Add revoked ids, bounding memory: the durable tombstones still cover the dropped ones."""
    if len(revoked) > REVOKED_MEMORY:
        revoked.clear()
    revoked.update(ids)


async def refresh(
    backend: ResultBackend, revoked: set[str], every: float = REVOCATIONS_REFRESH
) -> None:
    """Reload every tombstone each `every` seconds; a failed reload waits for the next one."""
    while True:
        await asyncio.sleep(every)
        try:
            live = await backend.revocations()
        except Exception as exc:
            log.warning("reloading revocations failed: %s", exc)
            continue
        remember(revoked, live)
