"""The worker: one TaskGroup of long-lived loops and a dispatcher.

Loops: consumer (supervised: restarts after a crash), settler, and side loops for the
heartbeat, lease renewal, the control channel and the revocation reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from typing import TYPE_CHECKING

from aiotask._event_types import EventType
from aiotask._log import get_logger
from aiotask._urls import redact
from aiotask.coordination.gate import renew_slots
from aiotask.exceptions import BrokerConnectionError, ConfigurationError
from aiotask.worker import _startup, control, revocations
from aiotask.worker._supervise import supervise
from aiotask.worker.commands import Commands, follow_queues
from aiotask.worker.consumer import Dispatcher, consume
from aiotask.worker.executor import Executor
from aiotask.worker.heartbeat import beat, heartbeat, renew_leases
from aiotask.worker.pool import SyncPool
from aiotask.worker.registry import Registry
from aiotask.worker.settle import Settler
from aiotask.worker.shutdown import Phase, Shutdown

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.app import App
    from aiotask.brokers.base import Delivery
    from aiotask.events.emitter import Emitter
    from aiotask.settings import Settings
    from aiotask.worker._probe import Probe

__all__ = ["Worker"]

log = get_logger(__name__)
#: Seconds a starting worker waits for its control channel before saying it is ready anyway.
CONTROL_READY_TIMEOUT = 5.0
#: Seconds a cold shutdown spends handing abandoned deliveries back before it just closes.
HANDBACK_TIMEOUT = 5.0


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
        probe: Probe | None = None,
        beat: bool = False,
        events: bool | None = None,
    ) -> None:
        conf = app.conf
        #: run periodic entries here too (`--beat`); any number of workers may
        self.embed_beat = beat
        #: metrics hooks (aiotask.metrics), wired in run(); None: no per-task cost
        self.probe = probe
        if beat:
            if conf.backend_url is None:
                raise ConfigurationError(
                    "--beat needs a result backend (beats agree on slots in it): set backend="
                )
            from aiotask.beat.runner import check_entries  # only with --beat: not in idle RSS

            check_entries(app, app.beat_entries.values())
        self.app = app
        self.queues = list(queues) if queues else [conf.default_queue]
        self.concurrency = concurrency or conf.concurrency
        self.prefetch = prefetch or conf.prefetch or self.concurrency
        self.name = name or f"aiotask@{socket.gethostname()}-{os.getpid()}"
        self.grace = shutdown_grace if shutdown_grace is not None else conf.shutdown_grace
        self.max_memory_per_child = max_memory_per_child or conf.max_memory_per_child
        #: the app's settings with this worker's options applied; app.conf itself is untouched,
        #: so the next Worker (start_worker) on the same app starts from the app's own settings
        self.conf: Settings = conf.replace(concurrency=self.concurrency, prefetch=self.prefetch)
        self.pool = SyncPool(
            processes if processes is not None else conf.processes,
            max_tasks_per_child or conf.max_tasks_per_child,
            self.max_memory_per_child,
        )
        self.shutdown = Shutdown()
        self.ready = asyncio.Event()
        #: set once the control channel listens (no backend: nothing to wait for)
        self._control_subscribed = asyncio.Event()
        if app.conf.backend_url is None:
            self._control_subscribed.set()
        self.settler = Settler(app, self._settled)
        self.dispatcher = Dispatcher(
            Executor(app, self.pool), self.settler, self.concurrency, self.prefetch
        )
        #: set by add/cancel-consumer: the consumer restarts on the new queue list
        self.queues_changed = asyncio.Event()
        self.registry = Registry(self)
        #: monitoring events (`-E`, or the `events` setting): recorded here, sent in batches
        self.events: Emitter | None = None
        if conf.events if events is None else events:
            from aiotask.events.emitter import Emitter  # with events on only (idle RSS)
            from aiotask.events.follow import event_stream

            self.events = Emitter(lambda: event_stream(app), self.name)
            self.dispatcher.events = self.dispatcher.executor.events = self.events

    def _settled(self, deliveries: Sequence[Delivery]) -> None:
        self.dispatcher.settled(deliveries)

    def banner(self) -> str:
        """What this worker is about to do, for the startup log (URLs redacted)."""
        conf = self.conf
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
                f"  events:       {'on (aiotask events)' if self.events else 'off (-E to emit)'}",
                "  tasks:",
                *(f"    . {name}" for name in tasks),
            ]
        )

    async def run(self) -> int:
        """Run until shutdown; 0 after a warm shutdown, 1 after a cold one or a fatal error."""
        app = self.app
        if self.probe is not None:
            self.dispatcher.probe = self.dispatcher.executor.probe = self.probe
            self.settler.probe = self.probe
            self.probe.attached(self)
        _create_broker(app, self.conf)
        if not await _startup.connect(app, self.conf, self.shutdown.requested):
            await self.pool.aclose()  # stopped while waiting for the broker: nothing ran
            return 0
        for mw in app.middleware:
            await mw.startup(app)
        failed = False
        try:
            async with asyncio.TaskGroup() as group:
                consumer, settler, side_loops = await self._start(group)
                await self.shutdown.requested.wait()
                await self._wind_down(consumer, settler, side_loops)
        except* Exception as group_error:
            for exc in group_error.exceptions:
                log.critical("worker %s stopped: %s", self.name, exc, exc_info=exc)
            failed = True
        finally:
            await self._close()
        return 1 if failed or self.shutdown.phase is Phase.COLD else 0

    async def _start(
        self, group: asyncio.TaskGroup
    ) -> tuple[asyncio.Task[None], asyncio.Task[None], list[asyncio.Task[None]]]:
        """Load revocations, beat, register, then start the consumer, settler and side loops."""
        app = self.app
        self.dispatcher.executor.backend = app.backend  # this loop's, for the worker's life
        if app.backend is not None:  # before consuming: skip what was revoked
            revocations.remember(self.dispatcher.executor.revoked, await app.backend.revocations())
        # Alive before the first message is taken: never look lost while holding work.
        await beat(app.broker, self.conf.worker_heartbeat_interval)
        if app.backend is not None:  # in the registry (aiotask status) from the start
            await self.registry.write(app.backend)
        fetch = functools.partial(
            follow_queues,
            self.queues_changed,
            functools.partial(consume, app.broker, self.queues, self.dispatcher),
        )
        consumer = group.create_task(
            supervise(
                "consumer",
                fetch,
                # the broker already retried for broker_unreachable_timeout: exit, and let the
                # process supervisor restart the worker
                fatal=(BrokerConnectionError,),
                give_up_after=self.conf.broker_unreachable_timeout,
            ),
            name="aiotask-consumer",
        )
        settler = group.create_task(self.settler.run(), name="aiotask-settler")
        side_loops = self._side_loops(group)
        # "ready" means a control request sent now is heard: wait (bounded) for the subscription
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONTROL_READY_TIMEOUT):
                await self._control_subscribed.wait()
        self._event(EventType.WORKER_ONLINE)
        self.ready.set()
        log.info("worker %s ready", self.name)
        return consumer, settler, side_loops

    async def _wind_down(
        self,
        consumer: asyncio.Task[None],
        settler: asyncio.Task[None],
        side_loops: list[asyncio.Task[None]],
    ) -> None:
        """Stop fetching, drain (warm or cold), settle everything that ran, then the rest."""
        await _stop(consumer)
        await self._drain()
        self.settler.stop()
        await settler  # settles everything that ran, then returns
        await self.dispatcher.gates.aclose()  # slots of finished tasks released, not left to lapse
        if self.events is not None:
            self._event(EventType.WORKER_OFFLINE)
            await self.events.close()
        for loop_task in side_loops:
            loop_task.cancel()
        await asyncio.wait(side_loops, timeout=HANDBACK_TIMEOUT)
        if self.app.backend is not None:  # stopped, not lost
            await self.registry.remove(self.app.backend)

    def _side_loops(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Heartbeat, lease renewal (brokers with leases), revoke broadcasts, tombstone reloads.

        Each is supervised: a crash is logged CRITICAL and the loop restarts; none can stop
        the worker.
        """
        app, conf = self.app, self.conf
        broker, backend = app.broker, app.backend
        loops = {
            "heartbeat": functools.partial(heartbeat, broker, conf.worker_heartbeat_interval),
        }
        if getattr(broker.capabilities, "leases", True):
            interval = conf.visibility_timeout / 3
            loops["leases"] = functools.partial(renew_leases, broker, self.dispatcher, interval)
        if self.embed_beat:
            from aiotask.beat import service as beat_service

            loops["beat"] = functools.partial(beat_service.embedded, app)
        if self.events is not None:
            beats = (conf.worker_heartbeat_interval, self._stats)
            loops["events"] = functools.partial(self.events.run, beats)
        if backend is not None:  # coordinated limits: keep this worker's slots leased
            loops["slots"] = functools.partial(renew_slots, self.dispatcher.gates)
        if backend is not None:
            executor = self.dispatcher.executor
            commands = Commands(self)
            loops["control"] = functools.partial(
                control.obey, backend, executor, commands, self._control_subscribed.set
            )
            loops["registry"] = functools.partial(self.registry.run, backend)
            loops["revocations"] = functools.partial(revocations.refresh, backend, executor.revoked)
        return [
            group.create_task(supervise(name, run), name=f"aiotask-{name}")
            for name, run in loops.items()
        ]

    def _stats(self) -> dict[str, object]:
        """The fields of worker-online / heartbeat / offline events."""
        running = len(self.dispatcher.running)
        return {"pid": os.getpid(), "queues": self.queues, "active": running,
                "processed": self.dispatcher.processed}  # fmt: skip

    def _event(self, kind: EventType) -> None:
        if self.events is not None:
            self.events.worker(kind, {"freq": self.conf.worker_heartbeat_interval, **self._stats()})

    async def _close(self) -> None:
        await self.pool.aclose()
        for mw in reversed(self.app.middleware):
            try:
                await mw.shutdown(self.app)
            except Exception:
                log.exception("middleware %r failed at shutdown", mw)
        await self.app.close()

    async def _drain(self) -> None:
        """Warm: hand back unstarted, wait for running up to the grace. Cold: abandon running."""
        broker = self.app.broker
        unstarted = self.dispatcher.take_buffer()
        if unstarted:
            try:  # uncounted: these never started
                await broker.nack(unstarted, requeue=True)
                log.info("handed back %d unstarted messages", len(unstarted))
            except Exception as exc:
                log.warning(
                    "could not hand back %d unstarted messages (%s); they return after their lease",
                    len(unstarted),
                    exc,
                )
        if self.dispatcher.running and self.shutdown.phase is Phase.WARM:
            log.info(
                "waiting up to %gs for %d running tasks", self.grace, len(self.dispatcher.running)
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
                # Counted: a task that always hangs must reach max_deliveries and be
                # dead-lettered, not run forever across restarts (unstarted ones above are not).
                async with asyncio.timeout(HANDBACK_TIMEOUT):
                    await broker.nack(abandoned, requeue=True, counted=True)
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


def _create_broker(app: App, conf: Settings) -> None:
    """Create the app's broker (if not yet created) from the worker's settings.

    A broker reads the prefetch once, when created (AMQP's basic.qos), so it must see the
    worker's copy; app.conf is swapped only for this synchronous call and restored at once.
    An app whose broker already exists (it sent messages first) keeps that broker.
    """
    original = app.conf
    app.conf = conf
    try:
        app.broker  # noqa: B018 - the property creates it
    finally:
        app.conf = original
