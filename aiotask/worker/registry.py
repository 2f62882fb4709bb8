"""This worker's entry in the registry: one write per `worker_heartbeat_interval`.

The entry is what `aiotask status` shows, read from the store alone: it answers with every
worker down. A worker that stops beating counts as lost after `worker_lost_after`; its entry
expires after REGISTRY_KEEP_FACTOR x that. A worker that stops cleanly removes its entry.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

from aiotask import __version__
from aiotask._log import get_logger
from aiotask._time import monotonic, now
from aiotask.control.records import REGISTRY_KEEP_FACTOR, WorkerInfo

if TYPE_CHECKING:
    from aiotask.backends.base import ResultBackend
    from aiotask.worker import Worker

log = get_logger(__name__)


class Registry:
    """Builds this worker's WorkerInfo from live counters (plain ints) and writes it."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = now()
        conf = worker.conf
        self.interval = conf.worker_heartbeat_interval
        self.lost_after = conf.worker_lost_after
        self.ttl = REGISTRY_KEEP_FACTOR * conf.worker_lost_after

    def info(self) -> WorkerInfo:
        w = self.worker
        dispatcher = w.dispatcher
        try:
            load = os.getloadavg()
        except OSError:  # pragma: no cover - not on this platform
            load = (0.0, 0.0, 0.0)
        return WorkerInfo(
            name=w.name,
            host=self.host,
            pid=self.pid,
            queues=tuple(w.queues),
            concurrency=dispatcher.concurrency,
            processes=w.pool.processes,
            version=__version__,
            started_at=self.started_at,
            beat_at=now(),
            lost_after=self.lost_after,
            done=dispatcher.processed,
            failed=dispatcher.failed,
            active=len(dispatcher.running),
            load=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
        )

    async def write(self, backend: ResultBackend) -> bool:
        """One registry write; a failure (or one hanging past the interval) is a warning."""
        try:
            async with asyncio.timeout(self.interval):
                await backend.register_worker(self.worker.name, self.info().encode(), self.ttl)
        except Exception as exc:
            log.warning("worker registry write failed (retried next interval): %r", exc)
            return False
        return True

    async def run(self, backend: ResultBackend) -> None:
        """Write every `interval` seconds, measured from the start of each write (no drift)."""
        due = monotonic() + self.interval
        while True:
            await asyncio.sleep(max(due - monotonic(), 0.0))
            due = monotonic() + self.interval
            await self.write(backend)

    async def remove(self, backend: ResultBackend) -> None:
        """On a clean stop: this worker is gone, not lost."""
        try:
            async with asyncio.timeout(self.interval):
                await backend.unregister_worker(self.worker.name)
        except Exception as exc:
            log.warning("could not remove this worker from the registry: %r", exc)
