"""The fetch loop and the dispatcher that holds a worker's deliveries (buffered, running, settling).

Flow control: the worker holds at most `prefetch` unsettled deliveries. The consumer asks the
broker for exactly the free room, so prefetch never exceeds what the worker can start soon.
Each body is decoded once, here: the rate limiter and the executor share the Message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from aiotask._log import get_logger
from aiotask.events.model import EventType
from aiotask.ratelimit import RateLimiter
from aiotask.security import UNDECODABLE, Refused
from aiotask.states import FAILURE
from aiotask.worker.outcome import Settlement

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.brokers.base import Broker, Delivery
    from aiotask.events.emitter import Emitter
    from aiotask.protocol import Message
    from aiotask.worker._probe import Probe
    from aiotask.worker.executor import Executor
    from aiotask.worker.settle import Settler

log = get_logger(__name__)
#: How many prefetches' worth of rate-limited messages a worker may hold waiting for tokens.
DEFER_FACTOR = 10


class Dispatcher:
    """Starts deliveries up to `concurrency` at once and tracks every unsettled one."""

    def __init__(
        self, executor: Executor, settler: Settler, concurrency: int, prefetch: int
    ) -> None:
        self.executor = executor
        self.settler = settler
        self.concurrency = concurrency
        self.prefetch = max(prefetch, 1)
        #: the app's live registry: a task (or rate limit) registered later is seen too
        self.tasks = executor.app.tasks
        #: verifies, bounds and decodes each body (aiotask/security)
        self.wire = executor.app.wire
        self.held: set[Delivery] = set()
        self.buffer: deque[tuple[Delivery, Message, bool]] = deque()
        #: rate-limited deliveries waiting for their token: timers, not worker slots
        self.deferred: dict[Delivery, asyncio.TimerHandle] = {}
        self.limiter = RateLimiter()
        #: metrics hooks (worker/_probe.py); None when nothing watches
        self.probe: Probe | None = None
        self.running: dict[Delivery, asyncio.Task[Settlement]] = {}
        self.space = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.processed = 0
        #: tasks that ended FAILURE (for the registry and inspect stats)
        self.failed = 0
        #: monitoring events (`-E`); None: off, nothing recorded
        self.events: Emitter | None = None

    def free(self) -> int:
        # Rate-limited messages waiting for a token do not count against the prefetch (up to
        # DEFER_FACTOR x prefetch of them), so a throttled backlog ahead in the queue does not
        # keep other tasks from being fetched.
        room = min(len(self.deferred), DEFER_FACTOR * self.prefetch)
        return self.prefetch - len(self.held) + room

    def accept(self, deliveries: Sequence[Delivery]) -> None:
        """Start, buffer or defer each delivery; one that cannot be handled is dead-lettered
        alone, never taking the consumer (or the rest of its batch) down with it."""
        if self.probe is not None:
            self.probe.received(deliveries)
        for delivery in deliveries:
            self.held.add(delivery)
            try:
                self._accept(delivery)
            except Exception as exc:
                self._internal_error(delivery, exc)

    def _accept(self, delivery: Delivery) -> None:
        try:
            message = self.wire.decode(delivery.body)
        except Refused as exc:
            self._refuse(delivery, exc)
            return
        if self.events is not None:
            retries = {"retries": message.retries} if message.retries else None
            self.events.task(
                EventType.TASK_RECEIVED, message.id, message.task, delivery.queue, None, retries
            )
        revoked = message.id in self.executor.revoked
        if not revoked:
            task = self.tasks.get(message.task)
            rate = task.options.rate_limit if task is not None else None
            if rate is not None:
                delay = self.limiter.reserve(message.task, rate)
                if delay > 0:
                    loop = asyncio.get_running_loop()
                    timer = loop.call_later(delay, self._undefer, delivery, message)
                    self.deferred[delivery] = timer
                    return
        if len(self.running) < self.concurrency:
            self._start(delivery, message, revoked)
        else:
            self.buffer.append((delivery, message, revoked))

    def _refuse(self, delivery: Delivery, exc: Refused) -> None:
        """A body that must not run (bad signature, too large, undecodable): dead-lettered
        before anything in it was decoded or run; the worker carries on."""
        log.warning(
            "dead-lettering message %s from %s (%s): %s",
            delivery.message_id,
            delivery.queue,
            exc.reason,
            exc.detail,
        )
        reason = exc.reason if exc.reason != UNDECODABLE else f"{UNDECODABLE}: {exc.detail}"
        self.settler.add(Settlement(delivery, "dead", reason=reason))
        if self.probe is not None:
            self.probe.refused(delivery, exc.reason)

    def _internal_error(self, delivery: Delivery, exc: BaseException) -> None:
        log.critical(
            "internal error handling message %s: %r (dead-lettered)",
            delivery.message_id,
            exc,
            exc_info=exc,
        )
        self.settler.add(Settlement(delivery, "dead", reason=f"internal error: {exc!r}"))

    def _undefer(self, delivery: Delivery, message: Message) -> None:
        if self.deferred.pop(delivery, None) is None:
            return
        if len(self.running) < self.concurrency:
            self._start(delivery, message, False)
        else:
            self.buffer.append((delivery, message, False))

    def _start(self, delivery: Delivery, message: Message, revoked: bool) -> None:
        task = asyncio.create_task(self.executor.execute(delivery, message, revoked))
        self.running[delivery] = task
        self.idle.clear()
        task.add_done_callback(lambda t, d=delivery: self._done(d, t))  # type: ignore[misc]

    def _done(self, delivery: Delivery, task: asyncio.Task[Settlement]) -> None:
        self.running.pop(delivery, None)
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                settlement = task.result()
                if settlement.store is not None and settlement.store.state == FAILURE:
                    self.failed += 1
                self.settler.add(settlement)
            else:
                self._internal_error(delivery, exc)
            self.processed += 1
        while self.buffer and len(self.running) < self.concurrency:
            self._start(*self.buffer.popleft())
        if not self.running:
            self.idle.set()

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        self.held.difference_update(deliveries)
        self.space.set()

    def take_buffer(self) -> list[Delivery]:
        """Unstarted deliveries, removed from the worker, to hand back on shutdown."""
        taken = [d for d, _, _ in self.buffer]
        self.buffer.clear()
        for delivery, timer in self.deferred.items():
            timer.cancel()
            taken.append(delivery)
        self.deferred.clear()
        self.held.difference_update(taken)
        return taken

    def cancel_running(self) -> list[Delivery]:
        """Cancel every running task (cold shutdown); their deliveries are not acknowledged."""
        cancelled = list(self.running)
        for task in self.running.values():
            task.cancel()
        self.held.difference_update(cancelled)
        return cancelled


async def consume(broker: Broker, queues: Sequence[str], dispatcher: Dispatcher) -> None:
    """Fetch only what there is room for. Revocations are known locally (loaded at start,
    then broadcast), so a batch costs no extra round trip before its tasks start.

    Run under `supervise`: a crash (a broker raising for one receive) restarts this loop."""
    while True:
        free = dispatcher.free()
        if free <= 0:
            dispatcher.space.clear()
            if dispatcher.free() <= 0:
                await dispatcher.space.wait()
            continue
        batch = await broker.receive(queues, free)
        if batch:
            dispatcher.accept(batch)
