"""The fetch loop and the dispatcher that holds a worker's deliveries (buffered, running, settling).

Flow control: the worker holds at most `prefetch` unsettled deliveries. The consumer asks the
broker for exactly the free room, so prefetch never exceeds what the worker can start soon.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from aiotask._log import get_logger
from aiotask.exceptions import ProtocolError
from aiotask.protocol import decode
from aiotask.ratelimit import RateLimiter
from aiotask.worker.outcome import Settlement

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.brokers.base import Broker, Delivery
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
        self.held: set[Delivery] = set()
        self.buffer: deque[tuple[Delivery, bool]] = deque()
        #: rate-limited deliveries waiting for their token: timers, not worker slots
        self.deferred: dict[Delivery, asyncio.TimerHandle] = {}
        self.limiter = RateLimiter()
        self.rates = {
            name: task.options.rate_limit
            for name, task in executor.app.tasks.items()
            if task.options.rate_limit is not None
        }
        self.running: dict[Delivery, asyncio.Task[Settlement]] = {}
        self.space = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.processed = 0

    def free(self) -> int:
        # Rate-limited messages waiting for a token do not count against the prefetch (up to
        # DEFER_FACTOR x prefetch of them), so a throttled backlog ahead in the queue does not
        # keep other tasks from being fetched.
        room = min(len(self.deferred), DEFER_FACTOR * self.prefetch)
        return self.prefetch - len(self.held) + room

    def accept(self, deliveries: Sequence[Delivery]) -> None:
        revoked = self.executor.revoked
        for delivery in deliveries:
            self.held.add(delivery)
            is_revoked = delivery.message_id in revoked
            delay = self._rate_delay(delivery) if self.rates and not is_revoked else 0.0
            if delay > 0:
                loop = asyncio.get_running_loop()
                self.deferred[delivery] = loop.call_later(delay, self._undefer, delivery)
            elif len(self.running) < self.concurrency:
                self._start(delivery, is_revoked)
            else:
                self.buffer.append((delivery, is_revoked))

    def _rate_delay(self, delivery: Delivery) -> float:
        """Seconds this delivery must wait for its task's rate limit (0 if none)."""
        try:
            name = decode(delivery.body).task
        except ProtocolError:
            return 0.0  # the executor dead-letters it
        rate = self.rates.get(name)
        return self.limiter.reserve(name, rate) if rate is not None else 0.0

    def _undefer(self, delivery: Delivery) -> None:
        if self.deferred.pop(delivery, None) is None:
            return
        if len(self.running) < self.concurrency:
            self._start(delivery, False)
        else:
            self.buffer.append((delivery, False))

    def _start(self, delivery: Delivery, revoked: bool) -> None:
        task = asyncio.create_task(self.executor.execute(delivery, revoked))
        self.running[delivery] = task
        self.idle.clear()
        task.add_done_callback(lambda t, d=delivery: self._done(d, t))  # type: ignore[misc]

    def _done(self, delivery: Delivery, task: asyncio.Task[Settlement]) -> None:
        self.running.pop(delivery, None)
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                self.settler.add(task.result())
            else:
                log.critical(
                    "internal error running message %s: %r (dead-lettered)",
                    delivery.message_id,
                    exc,
                    exc_info=exc,
                )
                self.settler.add(Settlement(delivery, "dead", reason=f"internal error: {exc!r}"))
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
        taken = [d for d, _ in self.buffer]
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
    then broadcast), so a batch costs no extra round trip before its tasks start."""
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


async def renew_leases(broker: Broker, dispatcher: Dispatcher, interval: float) -> None:
    """Keep every held delivery owned; runs on its own timer so busy tasks cannot starve it."""
    while True:
        await asyncio.sleep(interval)
        held = list(dispatcher.held)
        if not held:
            continue
        try:
            await broker.extend(held)
        except Exception as exc:
            log.warning("renewing %d leases failed: %s", len(held), exc)
