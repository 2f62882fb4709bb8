"""The worker: one TaskGroup of long-lived loops (consumer, settler, leases) and a dispatcher."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

import orjson

from aiotask._log import get_logger
from aiotask._urls import redact
from aiotask.worker.consumer import Dispatcher, consume, renew_leases
from aiotask.worker.executor import Executor
from aiotask.worker.pool import SyncPool
from aiotask.worker.settle import Settler
from aiotask.worker.shutdown import Phase, Shutdown

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.app import App
    from aiotask.brokers.base import Delivery

__all__ = ["Worker"]

log = get_logger(__name__)
#: Seconds a cold shutdown spends handing abandoned deliveries back before it just closes.
HANDBACK_TIMEOUT = 5.0
#: Broadcast revocations remembered in memory (tombstones in the backend cover the rest).
REVOKED_MEMORY = 100_000
#: Seconds between full reloads of the tombstones (the broadcast is the fast path).
REVOCATIONS_REFRESH = 10.0


class Worker:
    """Consumes queues and runs tasks until shut down; `run()` returns the exit code."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        processes: int | None = None,
        prefetch: int | None = None,
        name: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        shutdown_grace: float | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues) if queues else [conf.default_queue]
        self.concurrency = concurrency or conf.concurrency
        self.prefetch = prefetch or conf.prefetch or self.concurrency
        self.name = name or f"aiotask@{socket.gethostname()}-{os.getpid()}"
        self.grace = shutdown_grace if shutdown_grace is not None else conf.shutdown_grace
        self.max_memory_per_child = max_memory_per_child or conf.max_memory_per_child
        # Command-line options override the settings for this process; brokers created from
        # here on (e.g. AMQP's basic.qos) see the worker's real prefetch.
        app.conf = conf.replace(concurrency=self.concurrency, prefetch=self.prefetch)
        self.pool = SyncPool(
            processes if processes is not None else conf.processes,
            max_tasks_per_child or conf.max_tasks_per_child,
            self.max_memory_per_child,
        )
        self.shutdown = Shutdown()
        self.ready = asyncio.Event()
        self.settler = Settler(app, self._settled)
        self.dispatcher = Dispatcher(
            Executor(app, self.pool), self.settler, self.concurrency, self.prefetch
        )

    def _settled(self, deliveries: Sequence[Delivery]) -> None:
        self.dispatcher.settled(deliveries)

    def banner(self) -> str:
        """What this worker is about to do, for the startup log (URLs redacted)."""
        conf = self.app.conf
        tasks = sorted(t for t in self.app.tasks if not t.startswith("aiotask."))
        tasks = tasks or ["(none registered: check -A)"]
        return "\n".join(
            [
                f"aiotask worker {self.name}",
                f"  app:          {self.app.main}",
                f"  broker:       {redact(conf.broker_url)}",
                f"  results:      {redact(conf.backend_url) if conf.backend_url else 'disabled'}",
                f"  queues:       {', '.join(self.queues)}",
                f"  concurrency:  {self.concurrency} coroutines, {self.pool.processes} processes, "
                f"prefetch {self.prefetch}",
                "  tasks:",
                *(f"    . {name}" for name in tasks),
            ]
        )

    async def run(self) -> int:
        """Run until shutdown; 0 after a warm shutdown, 1 after a cold one or a fatal error."""
        app = self.app
        await app.connect()
        for mw in app.middleware:
            await mw.startup(app)
        failed = False
        try:
            async with asyncio.TaskGroup() as group:
                if app.backend is not None:  # before consuming: skip what was revoked
                    self.dispatcher.executor.revoked.update(await app.backend.revocations())
                consumer = group.create_task(
                    consume(app.broker, self.queues, self.dispatcher), name="aiotask-consumer"
                )
                settler = group.create_task(self.settler.run(), name="aiotask-settler")
                side_loops = self._side_loops(group)
                self.ready.set()
                log.info("worker %s ready", self.name)
                await self.shutdown.requested.wait()
                await _stop(consumer)
                await self._drain()
                self.settler.stop()
                await settler  # settles everything that ran, then returns
                for loop_task in side_loops:
                    loop_task.cancel()
        except* Exception as group_error:
            for exc in group_error.exceptions:
                log.critical("worker %s stopped: %s", self.name, exc, exc_info=exc)
            failed = True
        finally:
            await self._close()
        return 1 if failed or self.shutdown.phase is Phase.COLD else 0

    def _side_loops(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Lease renewal (brokers with leases), revoke broadcasts and tombstone reloads."""
        app, loops = self.app, []
        if getattr(app.broker.capabilities, "leases", True):
            interval = app.conf.visibility_timeout / 3
            loops.append(
                group.create_task(
                    renew_leases(app.broker, self.dispatcher, interval), name="aiotask-leases"
                )
            )
        if app.backend is not None:
            loops.append(group.create_task(self._control(), name="aiotask-control"))
            loops.append(group.create_task(self._refresh(), name="aiotask-revocations"))
        return loops

    async def _close(self) -> None:
        await self.pool.aclose()
        for mw in reversed(self.app.middleware):
            try:
                await mw.shutdown(self.app)
            except Exception:
                log.exception("middleware %r failed at shutdown", mw)
        await self.app.close()

    async def _control(self) -> None:
        """Obey broadcasts: revoke (skip if not started; with terminate, stop if running)."""
        backend = self.app.backend
        if backend is None:
            return
        executor = self.dispatcher.executor
        async for payload in backend.control():
            try:
                command = orjson.loads(payload)
                ids = [str(i) for i in command.get("ids", [])]
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                log.warning("ignoring a malformed control message: %r", payload[:120])
                continue
            if command.get("op") != "revoke":
                continue
            if len(executor.revoked) > REVOKED_MEMORY:
                executor.revoked.clear()  # the durable tombstones still cover older ones
            executor.revoked.update(ids)
            if command.get("terminate"):
                for task_id in ids:
                    if await executor.terminate(task_id):
                        log.warning("terminating task %s (revoked)", task_id)

    async def _refresh(self) -> None:
        """Reload every tombstone now and then: covers a broadcast missed while (re)subscribing."""
        backend = self.app.backend
        if backend is None:
            return
        executor = self.dispatcher.executor
        while True:
            await asyncio.sleep(REVOCATIONS_REFRESH)
            try:
                live = await backend.revocations()
            except Exception as exc:
                log.warning("reloading revocations failed: %s", exc)
                continue
            if len(executor.revoked) > REVOKED_MEMORY:
                executor.revoked.clear()
            executor.revoked.update(live)

    async def _drain(self) -> None:
        """Warm: hand back unstarted, wait for running up to the grace. Cold: abandon running."""
        broker = self.app.broker
        unstarted = self.dispatcher.take_buffer()
        if unstarted:
            await broker.nack(unstarted, requeue=True)
            log.info("handed back %d unstarted messages", len(unstarted))
        if self.dispatcher.running and self.shutdown.phase is Phase.WARM:
            log.info(
                "waiting up to %.0fs for %d running tasks", self.grace, len(self.dispatcher.running)
            )
            idle = asyncio.ensure_future(self.dispatcher.idle.wait())
            cold = asyncio.ensure_future(self.shutdown.cold.wait())
            done, pending = await asyncio.wait(
                {idle, cold}, timeout=self.grace, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in pending:
                fut.cancel()
            if idle not in done and self.shutdown.phase is Phase.WARM:
                log.warning(
                    "grace period over: abandoning %d running tasks", len(self.dispatcher.running)
                )
                self.shutdown.phase = Phase.COLD
        if self.dispatcher.running:
            abandoned = self.dispatcher.cancel_running()
            await asyncio.sleep(0)
            try:
                async with asyncio.timeout(HANDBACK_TIMEOUT):
                    await broker.nack(abandoned, requeue=True)
            except Exception as exc:
                log.warning(
                    "could not hand back %d messages (%s); they return after their lease",
                    len(abandoned),
                    exc,
                )


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a loop and wait until it has really stopped.

    A cancellation can be lost inside a client library (on Python 3.11, asyncio.wait_for
    swallows one that races with completion), so cancel again until the task is done.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
