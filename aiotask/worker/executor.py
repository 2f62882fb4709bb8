"""One decoded delivery -> one Settlement: skip revoked/expired, look up, run, classify, record."""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import get_running_loop
from typing import TYPE_CHECKING, Any

from aiotask._event_types import TASK_STARTED, TASK_SUCCEEDED, EventType
from aiotask._log import get_logger
from aiotask._time import now
from aiotask.backends.base import EncodedResult, ResultRecord, encode_fields, encoded_result
from aiotask.canvas.primitives import MAP_TASK, STARMAP_TASK
from aiotask.canvas.runtime import CHORD_BODY_HEADER, Finished
from aiotask.context import TaskContext, current_task
from aiotask.exceptions import (
    MessageTooLarge,
    NotRegistered,
    SerializationError,
    TaskRevoked,
    TimeLimitExceeded,
)
from aiotask.middleware.base import run_around
from aiotask.security import results as signed
from aiotask.serializer import exception_to_info
from aiotask.states import FAILURE, RETRY, REVOKED, SUCCESS, State
from aiotask.worker import _probe
from aiotask.worker._coordination import Gate, Verdict, coordinated
from aiotask.worker._eager import running as _running
from aiotask.worker._limits import SoftLimited
from aiotask.worker.outcome import (
    Failed,
    Outcome,
    Rejected,
    Retrying,
    Revoked,
    Settlement,
    Succeeded,
    classify,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

    from aiotask.app import App
    from aiotask.backends.base import ResultBackend
    from aiotask.brokers.base import Delivery
    from aiotask.events.emitter import Emitter
    from aiotask.protocol import Message
    from aiotask.task import Task
    from aiotask.worker._probe import Probe
    from aiotask.worker.pool import SyncPool

log = get_logger(__name__)
BUILTINS = frozenset({MAP_TASK, STARMAP_TASK})
_STATES: dict[type, str] = {
    Succeeded: _probe.SUCCEEDED,
    Failed: _probe.FAILED,
    Retrying: _probe.RETRIED,
    Rejected: _probe.REJECTED,
    Revoked: _probe.REVOKED,
}


class Executor:
    """Runs tasks; never raises for anything a task or a message does."""

    def __init__(self, app: App, pool: SyncPool) -> None:
        self.app = app
        self.pool = pool
        self.ttl = app.conf.result_expires
        self.track_started = app.conf.task_track_started
        self.max_result = app.conf.max_result_size
        #: whether results are stored (the backend instance belongs to the running loop; its
        #: existence is the configuration's, checked without looking the instance up per task)
        self.has_backend = app.conf.backend_url is not None
        #: the running loop's result backend, bound by the worker at start (as the consumer
        #: binds the broker): not looked up through the app's connection sets per task.
        #: None: looked up per task (an executor used outside a worker, or no backend)
        self.backend: ResultBackend | None = None
        #: seals stored results (result_signing; None: off)
        self.result_keyring = app.result_keyring
        #: metrics hooks (worker/_probe.py); None when nothing watches
        self.probe: Probe | None = None
        #: task id -> the asyncio task executing it, for revoke(terminate=True)
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.terminating: set[str] = set()
        #: ids revoked by broadcast while their messages were already here
        self.revoked: set[str] = set()
        #: monitoring events (`-E`); None: off, nothing recorded
        self.events: Emitter | None = None
        #: unique / debounce locks (worker/_coordination.py)
        self.gate = Gate(app)

    async def terminate(self, task_id: str) -> bool:
        """Stop a running task (revoke with terminate=True): cancel its coroutine, or kill the
        pool child running it. False if it is not running here."""
        running = self.running.get(task_id)
        if running is None:
            return False
        self.terminating.add(task_id)
        if not await self.pool.terminate(task_id):  # not a pool job: a coroutine
            running.cancel(msg="aiotask: terminated by revoke")
        return True

    def execute(
        self, delivery: Delivery, message: Message, revoked: bool = False
    ) -> Coroutine[Any, Any, Settlement]:
        """Run one delivery whose body the dispatcher already decoded (once) into `message`.
        Returns the coroutine itself in the common case (one coroutine less per task): with no
        headers (no chord-body or coordination check), not revoked, not expired and a known
        task, `_run`'s own coroutine, without `_execute`'s around it (the checks are the same
        ones, made at the same moment: the consumer starts the coroutine's first step at once).
        """
        if not message.headers:  # no headers: no coordination call
            if not revoked and message.id not in self.revoked and message.expires is None:
                task = self.app.tasks.get(message.task)
                if task is not None:
                    return self._run(delivery, message, task)
            return self._execute(delivery, message, revoked)
        if not coordinated(message):
            return self._execute(delivery, message, revoked)
        return self._coordinated(delivery, message, revoked)

    async def _coordinated(self, delivery: Delivery, message: Message, revoked: bool) -> Settlement:
        settlement = await self._execute(delivery, message, revoked)
        self.gate.after(settlement, message)
        return settlement

    async def _execute(self, delivery: Delivery, message: Message, revoked: bool) -> Settlement:
        revoked = revoked or message.id in self.revoked
        if revoked or (message.expires is not None and now() > message.expires):
            return self._skip(delivery, message, revoked)
        headers = message.headers
        if (
            headers
            and CHORD_BODY_HEADER in headers
            and await self._body_already_ran(delivery, message)
        ):
            return Settlement(delivery)
        task = self.app.tasks.get(message.task)
        if task is None:
            return self._unknown(delivery, message)
        if headers and coordinated(message):
            verdict = await self.gate.before(message, task)
            if verdict is Verdict.SUPERSEDED:
                return self._skip(delivery, message, True)
            if verdict is Verdict.DEFER:
                return self.gate.defer(delivery, message)
        return await self._run(delivery, message, task)

    def _started(self, delivery: Delivery, message: Message) -> None:
        """The probe's and the task-started event's record of a task about to run."""
        if self.probe is not None:
            self.probe.started(delivery, message)
        if self.events is not None:
            self.events.task(TASK_STARTED, message.id, message.task, delivery.queue)

    def _skip(self, delivery: Delivery, message: Message, revoked: bool) -> Settlement:
        """A revoked or expired message: recorded REVOKED, never run; its canvas fails on."""
        why = "revoked" if revoked else "expired"
        log.info("skipping %s task %s[%s]", why, message.task, message.id)
        if self.events is not None:
            self.events.task(
                EventType.TASK_REVOKED,
                message.id,
                message.task,
                delivery.queue,
                extra={"reason": why},
            )
        settlement = self._final(delivery, message, REVOKED, None, None)
        if self.probe is not None:
            state = _probe.REVOKED if revoked else _probe.EXPIRED
            self.probe.finished(delivery, message, state, None)
        if message.chain or message.errbacks or message.chord is not None:
            self._advance(settlement, message, Revoked(why))
        return settlement

    def _unknown(self, delivery: Delivery, message: Message) -> Settlement:
        """A task name this worker does not know: FAILURE, and the message is dead-lettered."""
        missing = NotRegistered(message.task)
        log.error("%s (message %s dead-lettered)", missing, message.id)
        if self.events is not None:
            self.events.task_error(
                EventType.TASK_FAILED, message.id, message.task, delivery.queue, missing
            )
        settlement = self._final(delivery, message, FAILURE, None, missing)
        settlement.action, settlement.reason = "dead", str(missing)
        if self.probe is not None:
            self.probe.finished(delivery, message, _probe.FAILED, None)
        return settlement

    async def _run(self, delivery: Delivery, message: Message, task: Task[Any, Any]) -> Settlement:
        if self.probe is not None or self.events is not None:
            self._started(delivery, message)
        ctx = TaskContext(
            message.id,
            message.task,
            message.args,
            message.kwargs,
            message.retries,
            message.root_id,
            message.parent_id,
            message.group_id,
            message.headers,
            delivery.deliveries,
            self.backend or self.app.backend,
            self.ttl,
            self.result_keyring,
        )
        token = current_task.set(ctx)
        started = time.perf_counter()
        this = _running(get_running_loop()) if _running is not None else asyncio.current_task()
        if this is not None:
            self.running[message.id] = this
        try:
            if self.track_started and self.has_backend:
                await ctx.update_state(State.STARTED)
            if self.app.middleware:
                value = await run_around(
                    self.app.middleware, ctx, lambda: self._call(task, ctx, message)
                )
            else:
                value = await self._call(task, ctx, message)
            outcome: Outcome | None = None  # a success: no Succeeded built unless needed
        except asyncio.CancelledError:
            outcome = self._terminated(message, this)
        except BaseException as exc:
            outcome = classify(exc, task.options.retry, message.retries)
        finally:
            current_task.reset(token)
            self.running.pop(message.id, None)
            self.terminating.discard(message.id)
        elapsed = time.perf_counter() - started
        canvas = message.chain or message.links or message.errbacks or message.chord is not None
        if outcome is None and not canvas and not task.has_hooks:
            return self._succeeded(delivery, message, value, elapsed)  # nothing reads outcome
        outcome = outcome or Succeeded(value)  # an outcome is never falsy
        settlement = self._settle(delivery, message, task, outcome, elapsed)
        outcome = _as_stored(settlement, outcome)
        if canvas:
            self._advance(settlement, message, outcome)
        if task.has_hooks:
            await _run_hooks(task, message, outcome)
        return settlement

    def _terminated(self, message: Message, this: asyncio.Task[Any] | None) -> Outcome:
        """A task cancelled while it ran: terminated by revoke (REVOKED), or, if not, a cold
        shutdown's cancel, re-raised (the settler never sees the delivery; it is handed back).
        Called inside `_run`'s `except CancelledError`: the bare raise re-raises that one."""
        if message.id not in self.terminating:
            raise  # the CancelledError being handled in _run
        self.terminating.discard(message.id)
        if this is not None:
            this.uncancel()
        log.warning("task %s[%s] terminated by revoke", message.task, message.id)
        return Revoked("terminated")

    def _call(self, task: Task[Any, Any], ctx: TaskContext, message: Message) -> Awaitable[Any]:
        """What to await for the task's value (no coroutine of its own: one less per task)."""
        if message.task in BUILTINS:
            return self._map(ctx, message)
        return self._invoke(task, ctx, message.args, message.kwargs)

    async def _map(self, ctx: TaskContext, message: Message) -> list[Any]:
        """aiotask.map / aiotask.starmap: call the target once per item, in order."""
        target_name, items = message.args
        target = self.app.tasks.get(target_name)
        if target is None:
            raise NotRegistered(target_name)
        spread = message.task == STARMAP_TASK
        return [await self._invoke(target, ctx, list(i) if spread else [i], {}) for i in items]

    def _invoke(
        self, task: Task[Any, Any], ctx: TaskContext, args: list[Any], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """The task's own coroutine (wrapped only when it has time limits), or the pool's run."""
        if task.is_async:
            coro = task.fn(ctx, *args, **kwargs) if task.options.bind else task.fn(*args, **kwargs)
            soft, limit = task.options.soft_time_limit, task.options.time_limit
            if soft is not None:
                coro = SoftLimited(coro, soft, f"{task.name}[{ctx.id}]")
            if limit is None:
                return coro  # type: ignore[no-any-return]
            return _limited(coro, limit, f"{task.name}[{ctx.id}]")
        return self.pool.run(
            task.fn.__module__,
            task.name,
            args,
            kwargs,
            task_id=ctx.id,
            soft_time_limit=task.options.soft_time_limit,
            time_limit=task.options.time_limit,
            ctx=ctx if task.options.bind else None,
        )

    def _settle(
        self,
        delivery: Delivery,
        message: Message,
        task: Task[Any, Any],
        outcome: Outcome,
        elapsed: float,
    ) -> Settlement:
        if isinstance(outcome, Succeeded):
            return self._succeeded(delivery, message, outcome.value, elapsed)
        name, ident = message.task, message.id
        if self.events is not None:  # its task-* event (checked here: no call when off)
            _outcome_event(self.events, delivery, message, outcome, elapsed)
        if self.probe is not None:
            self.probe.finished(delivery, message, _STATES[type(outcome)], elapsed)
        match outcome:
            case Retrying(decision):
                log.warning(
                    "task %s[%s] retry %d in %.1fs: %r",
                    name,
                    ident,
                    message.retries + 1,
                    decision.delay,
                    decision.exc,
                    extra={"task_name": name, "task_id": ident},
                )
                again = message.evolve(retries=message.retries + 1, eta=now() + decision.delay)
                settlement = self._record(delivery, message, RETRY, None, decision.exc)
                settlement.publish = [again]
                return settlement
            case Failed(exc):
                log.error(
                    "task %s[%s] failed after %.4fs: %r",
                    name,
                    ident,
                    elapsed,
                    exc,
                    exc_info=exc,
                    extra={"task_name": name, "task_id": ident},
                )
                return self._final(delivery, message, FAILURE, None, exc)
            case Rejected(requeue, reason):
                log.warning(
                    "task %s[%s] rejected (%s)",
                    name,
                    ident,
                    reason,
                    extra={"task_name": name, "task_id": ident},
                )
                return Settlement(delivery, "requeue" if requeue else "dead", reason=reason)
            case Revoked(reason):
                return self._final(delivery, message, REVOKED, None, None)

    def _succeeded(
        self, delivery: Delivery, message: Message, value: Any, elapsed: float
    ) -> Settlement:
        """A success: its event, probe record and log line, and its result to store (no
        Succeeded outcome built for it: `_run` builds one only for a canvas step or hooks)."""
        if self.events is not None:  # its task-* event (checked here: no call when off)
            _outcome_event(self.events, delivery, message, Succeeded(value), elapsed)
        if self.probe is not None:
            self.probe.finished(delivery, message, _probe.SUCCEEDED, elapsed)
        if log.isEnabledFor(logging.INFO):
            name, ident = message.task, message.id
            log.info(
                "task %s[%s] succeeded in %.4fs",
                name,
                ident,
                elapsed,
                extra={"task_name": name, "task_id": ident},
            )
        if message.ignore_result and message.chord is None:  # _final, inlined
            return Settlement(delivery)
        return self._record(delivery, message, SUCCESS, value, None)

    def _advance(self, settlement: Settlement, message: Message, outcome: Outcome) -> None:
        """Canvas: hand the settler what this outcome means for the workflow (it derives and
        publishes the follow-ups, canvas/runtime.py, for the whole batch at once)."""
        match outcome:
            case Succeeded(value):
                settlement.finished = Finished(message, True, value)
            case Failed(exc):
                settlement.finished = Finished(message, False, error=exception_to_info(exc))
            case Revoked(reason):
                error = exception_to_info(TaskRevoked(f"{message.id}: {reason}"))
                settlement.finished = Finished(message, False, error=error)
            case _:
                return

    async def _body_already_ran(self, delivery: Delivery, message: Message) -> bool:
        """A chord body published again (its chord's completion was re-derived after a worker
        died before marking it sent) whose result is already final: run it once only.

        Only a first delivery is skipped: a redelivered body may have stored its result but
        died before publishing its own follow-ups, so it runs again (at least once). If the
        backend cannot answer, the body runs: twice is better than never.
        """
        backend = self.app.backend
        if backend is None or delivery.deliveries > 1:
            return False
        try:
            record = await backend.get(message.id)
        except Exception as exc:
            log.warning("cannot check chord body %s before running it: %s", message.id, exc)
            return False
        if record is None or not record.ready:
            return False
        log.info(
            "skipping chord body %s[%s]: it already ran (a re-published copy)",
            message.task,
            message.id,
        )
        return True

    def _final(
        self,
        delivery: Delivery,
        message: Message,
        state: str,
        value: Any,
        exc: BaseException | None,
    ) -> Settlement:
        if message.ignore_result and state == SUCCESS and message.chord is None:
            return Settlement(delivery)
        return self._record(delivery, message, state, value, exc)

    def _record(
        self,
        delivery: Delivery,
        message: Message,
        state: str,
        value: Any,
        exc: BaseException | None,
    ) -> Settlement:
        if not self.has_backend:
            return Settlement(delivery)
        info = exception_to_info(exc) if exc is not None else None
        try:  # encoded straight from the fields: no ResultRecord on the task path
            data = encode_fields(  # time.time(): now() without its call
                message.id, state, value, info, message.task, message.retries, time.time()
            )
            if self.result_keyring is not None:
                data = signed.seal(self.result_keyring, data)
            stored = encoded_result(message.id, state, data, self.ttl, message.reply_to)
            if self.max_result and len(stored.data) > self.max_result:
                raise MessageTooLarge(message.task, len(stored.data), self.max_result, "result")
        except SerializationError as err:
            log.error("task %s[%s]: %s", message.task, message.id, err)
            failed = ResultRecord(
                message.id,
                FAILURE,
                None,
                exception_to_info(err),
                message.task,
                message.retries,
                now(),
            )
            stored = EncodedResult.of(failed, self.ttl, self.result_keyring)
            return Settlement(delivery, store=stored, store_error=err)
        return Settlement(delivery, "ack", stored)  # positional: ~1,000 instructions less


async def _limited(coro: Awaitable[Any], limit: float, what: str) -> Any:
    """A task's coroutine under its hard time limit."""
    try:
        async with asyncio.timeout(limit):
            return await coro
    except TimeoutError:
        raise TimeLimitExceeded(f"task {what} exceeded its time limit of {limit}s") from None


def _as_stored(settlement: Settlement, outcome: Outcome) -> Outcome:
    """A success whose result could not be stored (over max_result_size, not encodable) is a
    failure for the canvas too: the next chain step must not get a result nobody stored."""
    if settlement.store_error is not None and type(outcome) is Succeeded:
        return Failed(settlement.store_error)
    return outcome


async def _run_hooks(task: Task[Any, Any], message: Message, outcome: Outcome) -> None:
    """Celery's hooks, in Celery's order; a failing hook is logged, never fatal."""
    ident, args, kwargs = message.id, message.args, message.kwargs
    try:
        match outcome:
            case Succeeded(value):
                await task.on_success(value, ident, args, kwargs)
                await task.after_return(State.SUCCESS, value, ident, args, kwargs, None)
            case Retrying(decision):
                einfo = exception_to_info(decision.exc).traceback
                await task.on_retry(decision.exc, ident, args, kwargs, einfo)
                await task.after_return(State.RETRY, decision.exc, ident, args, kwargs, einfo)
            case Failed(exc):
                einfo = exception_to_info(exc).traceback
                await task.on_failure(exc, ident, args, kwargs, einfo)
                await task.after_return(State.FAILURE, exc, ident, args, kwargs, einfo)
            case _:
                pass
    except Exception:
        log.exception("a hook of task %s[%s] raised", message.task, ident)


def _outcome_event(
    events: Emitter | None,
    delivery: Delivery,
    message: Message,
    outcome: Outcome,
    runtime: float,
) -> None:
    """Record the task-* event of one outcome (a buffer append; the emitter sends it)."""
    if events is None:
        return
    ident, name, queue = message.id, message.task, delivery.queue
    if type(outcome) is Succeeded and not message.retries:  # the common case first
        events.succeeded(ident, name, queue, runtime)
        return
    retries = {"retries": message.retries} if message.retries else None
    match outcome:
        case Succeeded():
            events.task(TASK_SUCCEEDED, ident, name, queue, runtime, retries)
        case Failed(exc):
            events.task_error(EventType.TASK_FAILED, ident, name, queue, exc, runtime, retries)
        case Retrying(decision):
            extra = {"retries": message.retries, "eta": now() + decision.delay}
            events.task_error(
                EventType.TASK_RETRIED, ident, name, queue, decision.exc, runtime, extra
            )
        case Rejected(_requeue, reason):
            events.task(EventType.TASK_REJECTED, ident, name, queue, None, {"reason": reason})
        case Revoked(reason):
            events.task(EventType.TASK_REVOKED, ident, name, queue, None, {"reason": reason})
