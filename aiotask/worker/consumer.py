"""The fetch loop and the dispatcher that holds a worker's deliveries (buffered, running, settling).

Flow control: the worker holds at most `prefetch` unsettled deliveries. The consumer asks the
broker for exactly the free room, so prefetch never exceeds what the worker can start soon.
Each body is decoded once, here: the rate limiter and the executor share the Message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiotask._event_types import TASK_RECEIVED
from aiotask._log import get_logger
from aiotask._time import now
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.coordination import spec as limit_spec
from aiotask.coordination.gate import Gates
from aiotask.exceptions import ConfigurationError, MessageRefused
from aiotask.ratelimit import RateLimiter
from aiotask.security import UNDECODABLE, Refused
from aiotask.serializer import ExceptionInfo
from aiotask.states import FAILURE
from aiotask.worker import _eager as eager
from aiotask.worker._fair_buffer import FairBuffer
from aiotask.worker.outcome import Settlement

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.brokers.base import Broker, Delivery
    from aiotask.coordination.store import CoordinationStore
    from aiotask.events.emitter import Emitter
    from aiotask.protocol import Message
    from aiotask.security.signing import Keyring
    from aiotask.task import Task
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
        #: waiting for a slot; started round-robin across fairness keys (_fair_buffer.py)
        self.buffer = FairBuffer()
        #: rate-limited deliveries waiting for their token: timers, not worker slots
        self.deferred: dict[Delivery, asyncio.TimerHandle] = {}
        self.limiter = RateLimiter()
        # coordinated limits (global rate, concurrency): deliveries wait in the gates, not
        # in worker slots; `gated` keeps their messages until they start
        app = executor.app
        #: hold messages whose eta is still ahead: in Celery's layouts the eta travels in the
        #: message (sent at once) and the consumer holds it, unacked, until due
        self.hold_eta = app.conf.celery_compat
        self.gates: Gates[Delivery] = Gates(
            self._coordination_store, self._ungate, app.conf.concurrency_slot_lease
        )
        self.gated: dict[Delivery, Message] = {}
        #: held waiting for limits at most this many; further ones are parked in the broker
        #: (under the prefetch, which is RabbitMQ's basic.qos, so other tasks still arrive)
        self.park_after = max(self.prefetch // 2, 1)
        self._store: CoordinationStore | None = None
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
        #: task-received events of the batch being accepted (id, name, queue, other keys); a
        #: new list per batch: the emitter keeps the one it is handed, as it is
        self.received: list[tuple[str, str, str, dict[str, Any] | None]] = []

    def free(self) -> int:
        # Rate-limited messages waiting for a token do not count against the prefetch (up to
        # DEFER_FACTOR x prefetch of them), so a throttled backlog ahead in the queue does not
        # keep other tasks from being fetched.
        room = min(len(self.deferred) + len(self.gated), DEFER_FACTOR * self.prefetch)
        return self.prefetch - len(self.held) + room

    def accept(self, deliveries: Sequence[Delivery]) -> None:
        """Start, buffer or defer each delivery; one that cannot be handled is dead-lettered
        alone, never taking the consumer (or the rest of its batch) down with it."""
        if self.probe is not None:
            self.probe.received(deliveries)
        if self.events is not None:
            self.received = []
        for delivery in deliveries:
            self.held.add(delivery)
            try:
                self._accept(delivery)
            except Exception as exc:
                self._internal_error(delivery, exc)
        if self.events is not None and self.received:
            self.events.tasks(TASK_RECEIVED, self.received)

    def _accept(self, delivery: Delivery) -> None:
        try:
            message = self.wire.decode(delivery.body)
        except Refused as exc:
            self._refuse(delivery, exc)
            return
        except MessageRefused as exc:
            log.warning("dead-lettering refused message %s: %s", delivery.message_id, exc)
            app = self.executor.app
            store = _refused_record(exc, app.conf.result_expires, app.result_keyring)
            self.settler.add(Settlement(delivery, "dead", store, reason=f"refused: {exc}"))
            return
        if self.events is not None:  # recorded for the whole batch at the end of accept()
            extra: dict[str, Any] | None = None
            if message.parent_id or message.group_id:
                from aiotask.events.follow import links  # events on only: not in idle RSS

                extra = dict(links(message))
            if message.retries:
                extra = {**(extra or {}), "retries": message.retries}
            self.received.append((message.id, message.task, delivery.queue, extra))
        if self.hold_eta and message.eta is not None and message.eta > now():
            loop = asyncio.get_running_loop()
            timer = loop.call_later(message.eta - now(), self._due, delivery, message)
            self.deferred[delivery] = timer
            return
        self._admit(delivery, message)

    def _due(self, delivery: Delivery, message: Message) -> None:
        """A held message's eta came: admit it as if just received."""
        if self.deferred.pop(delivery, None) is not None:
            try:
                self._admit(delivery, message)
            except Exception as exc:
                self._internal_error(delivery, exc)

    def _admit(self, delivery: Delivery, message: Message) -> None:
        revoked = message.id in self.executor.revoked
        if not revoked:
            task = self.tasks.get(message.task)
            if task is not None:
                o = task.options  # no limits and no headers (the common case): no calls
                limited = o.rate_limit is not None or o.concurrency_limit is not None
                if (limited or message.headers) and self._held(delivery, message, task):
                    return
        if len(self.running) < self.concurrency:
            self._start(delivery, message, revoked)
        else:
            self.buffer.append((delivery, message, revoked))

    def _held(self, delivery: Delivery, message: Message, task: Task[..., object]) -> bool:
        """Deferred for its rate limit, gated, or dead-lettered (its limit key failed): True;
        False when it may start now."""
        try:
            limits = _limits(task, message)
        except Exception as exc:  # a user's key callable: this message can never start
            self._unusable_limits(delivery, message, f"its limit key failed: {exc!r}")
            return True
        if limits.rate is not None and limits.scope != "global":
            delay = self.limiter.reserve(limits.rate_key, limits.rate)
            if delay > 0:
                loop = asyncio.get_running_loop()
                timer = loop.call_later(delay, self._undefer, delivery, message, limits)
                self.deferred[delivery] = timer
                return True
        if limits.coordinated:
            self._gate(delivery, message, limits)
            return True
        return False

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

    def _gate(self, delivery: Delivery, message: Message, limits: limit_spec.Limits) -> None:
        """Wait for the global rate and/or a concurrency slot (coordination/gate.py)."""
        if self._store is None and self.executor.app.backend is None:
            self._unusable_limits(
                delivery,
                message,
                "a global rate limit or concurrency_limit needs a result backend (the workers "
                "share their budgets in it): set backend=",
            )
            return
        if len(self.gated) >= self.park_after:
            self._park(delivery, message, limits)
            return
        self.gated[delivery] = message
        self.gates.admit(delivery, limits)

    def _unusable_limits(self, delivery: Delivery, message: Message, why: str) -> None:
        log.error("task %s[%s] dead-lettered: %s", message.task, message.id, why)
        self.settler.add(Settlement(delivery, "dead", reason=why))

    def _park(self, delivery: Delivery, message: Message, limits: limit_spec.Limits) -> None:
        """Too many held already: publish the message again with a delay and ack this copy
        (publish first, so a crash duplicates, never loses). Its retries are untouched:
        waiting for a limit is not a delivery attempt."""
        parked = int(message.headers.get(PARKED, "0"))
        wall = now()
        delay = self.gates.park_delay(limits, parked, wall)
        headers = {**message.headers, PARKED: str(parked + 1)}
        again = message.evolve(eta=wall + delay, headers=headers)
        log.debug("parking %s[%s] for %.1fs (limits)", message.task, message.id, delay)
        self.settler.add(Settlement(delivery, "ack", publish=[again]))

    def _coordination_store(self) -> CoordinationStore:
        if self._store is None:
            app = self.executor.app
            if app.backend is None:
                raise ConfigurationError("coordinated limits need a result backend")
            self._store = app.backend.coordination_store(app.main)
        return self._store

    def _ungate(self, delivery: Delivery) -> None:
        message = self.gated.pop(delivery, None)
        if message is None:
            return
        if len(self.running) < self.concurrency:
            self._start(delivery, message, False)
        else:
            self.buffer.append((delivery, message, False))

    def _undefer(self, delivery: Delivery, message: Message, limits: limit_spec.Limits) -> None:
        if self.deferred.pop(delivery, None) is None:
            return
        if limits.coordinated:
            self._gate(delivery, message, limits)
            return
        if len(self.running) < self.concurrency:
            self._start(delivery, message, False)
        else:
            self.buffer.append((delivery, message, False))

    def _start(self, delivery: Delivery, message: Message, revoked: bool) -> None:
        if self.received and self.events is not None:  # task-received before task-started
            self.events.tasks(TASK_RECEIVED, self.received)
            self.received = []
        # its first step runs now (_eager.py): a task that never waits is done here already
        coro = self.executor.execute(delivery, message, revoked)
        task = eager.start(coro, asyncio.get_running_loop())
        if task._state != eager.PENDING:  # done() without its call (Python on 3.11's Task)
            self._outcome(delivery, task)
            return
        running = self.running
        if not running:
            self.idle.clear()
        running[delivery] = task
        task.add_done_callback(lambda t, d=delivery: self._done(d, t))  # type: ignore[misc]

    def _done(self, delivery: Delivery, task: asyncio.Task[Settlement]) -> None:
        self.running.pop(delivery, None)
        self._outcome(delivery, task)
        while self.buffer and len(self.running) < self.concurrency:
            self._start(*self.buffer.popleft())
        if not self.running:
            self.idle.set()

    def _outcome(self, delivery: Delivery, task: asyncio.Task[Settlement]) -> None:
        """A finished task: free its slot and hand its settlement to the settler."""
        if self.gates.slots:  # its concurrency slot, if any, is free again
            self.gates.finished(delivery)
        # result() without its call (a Python one on 3.11's Task) when it would just return
        if task._state == eager.FINISHED and task._exception is None:
            settlement: Settlement = task._result  # type: ignore[attr-defined]
        else:
            try:
                settlement = task.result()
            except asyncio.CancelledError:
                return
            except BaseException as exc:
                self._internal_error(delivery, exc)
                self.processed += 1
                return
        if settlement.store is not None and settlement.store.state == FAILURE:
            self.failed += 1
        self.settler.add(settlement)
        self.processed += 1

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
        taken += self.gates.take()
        self.gated.clear()
        for delivery in taken:  # a buffered message may hold a concurrency slot: free it now
            self.gates.finished(delivery)
        self.held.difference_update(taken)
        return taken

    def cancel_running(self) -> list[Delivery]:
        """Cancel every running task (cold shutdown); their deliveries are not acknowledged."""
        cancelled = list(self.running)
        for task in self.running.values():
            task.cancel()
        self.held.difference_update(cancelled)
        return cancelled


NO_LIMITS = limit_spec.Limits()
#: Header counting how often a message was parked (its park delay backs off).
PARKED = "aiotask-parked"


def _limits(task: Task[..., object], message: Message) -> limit_spec.Limits:
    """The rate and concurrency limits of one message: call headers over task options."""
    o = task.options
    if o.rate_limit is None and o.concurrency_limit is None and not message.headers:
        return NO_LIMITS  # the common case costs nothing
    defaults = limit_spec.Limits(o.rate_limit, o.rate_limit_scope, "", o.concurrency_limit)
    return limit_spec.resolve(
        task.name,
        defaults,
        (o.rate_limit_key, o.concurrency_key),
        message.args,
        message.kwargs,
        message.headers,
        task.fn,
        o.bind,
    )


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


def _refused_record(
    exc: MessageRefused, ttl: float, sealer: Keyring | None
) -> EncodedResult | None:
    """FAILURE under the refused message's task id: its callers get the reason, not a hang."""
    if not exc.task_id:
        return None
    info = ExceptionInfo(f"{MessageRefused.__module__}.MessageRefused", str(exc), "", (str(exc),))
    record = ResultRecord(exc.task_id, FAILURE, None, info, exc.task or None, 0, now())
    return EncodedResult.of(record, ttl, sealer)
