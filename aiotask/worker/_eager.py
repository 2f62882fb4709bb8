"""Start a task's coroutine at once, in the caller's turn of the loop (asyncio's eager start).

Most tasks a worker runs finish without ever waiting (a no-op, a computation, a result
stored by the settler later). For those, an ordinary `asyncio.Task` costs a scheduled first
step, a scheduled done callback and two turns of the loop. Python 3.12's
`asyncio.eager_task_factory` runs the first step inside `create_task`; this module does the
same on 3.11: a Task whose first step runs now, under its own context and as the current
task (so `asyncio.current_task()`, `asyncio.timeout`, soft time limits and revoke by
cancel see this Task, exactly as if the loop had stepped it). If the coroutine finishes,
the Task is already done when `start` returns: no step or callback was scheduled. If it
waits, the Task carries on like any other (registered, cancellable, awaited by the loop).

On 3.11 it builds on asyncio's pure-Python Task (the C Task schedules its first step in its
constructor): a Task that waits takes its later steps in Python, a few µs more per await,
and `isinstance(task, asyncio.Task)` is False for it. On 3.12 and later, asyncio's own
`Task(..., eager_start=True)` does the same with the C Task and no private names.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import futures, tasks
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    _PyTask = asyncio.Task[Any]
else:
    _PyTask = tasks._PyTask

#: 3.12+: asyncio.Task takes eager_start (it copies the context and swaps the current task)
_NATIVE = sys.version_info >= (3, 12)
_enter, _leave, _register = tasks._enter_task, tasks._leave_task, tasks._register_task
#: loop -> its running Task: asyncio's own table, which 3.11's (pure-Python) current_task()
#: reads; read here directly, without that call (3.12+ takes the native path, not this one)
_current: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = (
    {} if _NATIVE else tasks._current_tasks  # type: ignore[attr-defined]
)
#: loop -> its running Task, asyncio.current_task() without its Python call on 3.11 (a C dict
#: lookup); None on 3.12+, where asyncio.current_task is C already
running: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] | None = (
    None if _NATIVE else _current.get
)
#: asyncio's own task numbering (the names are Task-1, Task-2, ... as for any Task)
_next_name = tasks._task_name_counter  # type: ignore[attr-defined]
_future_init = futures._PyFuture.__init__  # type: ignore[attr-defined]
_PENDING = futures._PENDING  # type: ignore[attr-defined]
_FINISHED = futures._FINISHED  # type: ignore[attr-defined]
#: read by the consumer for done() and result() without their calls (on any Task: the C
#: Task has these attributes too)
PENDING, FINISHED = _PENDING, _FINISHED


class EagerTask(_PyTask):
    """An asyncio Task whose first step is run by `start`, not scheduled on the loop."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
    ) -> None:
        # asyncio.Task.__init__ minus its call_soon(first step); _register_task only if it waits
        if loop.get_debug():  # Future.__init__ (it records where the Future was made)
            _future_init(self, loop=loop)
        else:  # Future.__init__ without its call: the rest are class attributes
            self._loop = loop  # type: ignore[misc]
            self._callbacks: list[Any] = []
        self._name: str | None = None  # numbered when asked (get_name): most never are
        self._num_cancels_requested = 0
        self._must_cancel = False
        self._fut_waiter = None
        self._coro = coro
        self._context = context

    def __del__(self) -> None:
        # Task.__del__ and Future.__del__ (two Python calls per task) only log a Task
        # destroyed pending or an exception nobody retrieved: called for those alone
        if self._state == _PENDING or self._Future__log_traceback:  # type: ignore[attr-defined]
            super().__del__()

    def get_name(self) -> str:
        if self._name is None:
            self._name = f"Task-{_next_name()}"
        return self._name


def start(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any]:
    """Run coro's first step now as a Task of its own (in a copy of the current context).

    Done on return when the coroutine did not wait; otherwise pending and driven by the loop.
    The caller's current task (if any) is set aside for the step and restored after it.
    """
    if _NATIVE:
        native: Any = asyncio.Task  # eager_start is not in 3.11's stubs
        started: asyncio.Task[Any] = native(coro, loop=loop, eager_start=True)
        return started
    task = EagerTask(coro, loop, contextvars.copy_context())
    caller = _current.get(loop)  # tasks.current_task(loop) without its Python call
    if caller is not None:
        _leave(loop, caller)
    # 3.11's Task.__step written out for a coroutine that returns without a cancel request
    # (its result set as set_result would, with no callbacks to schedule: nobody had the Task
    # yet); anything else the send gave (a yield, an exception, a cancel request made during
    # the step) is handed to asyncio's own step through a _Replay
    try:
        _enter(loop, task)
        try:
            yielded = task._context.run(coro.send, None)
        except StopIteration as stop:
            if not task._must_cancel:  # the common case: finished, nothing to call back
                task._result = stop.value  # type: ignore[attr-defined]
                task._state = _FINISHED
                return task  # (the finally clauses leave the task and restore the caller)
            replay = _Replay(task, None, stop)
        except BaseException as exc:  # re-raised by the replay inside asyncio's own step
            replay = _Replay(task, None, exc)
        else:
            replay = _Replay(task, yielded, None)
        finally:
            _leave(loop, task)
        # __step reads _coro once, at its start: the replay stands in for that step only
        task._coro = replay  # type: ignore[assignment]
        try:
            task._context.run(task._Task__step)  # type: ignore[attr-defined]
        finally:
            task._coro = coro
    finally:
        if caller is not None:
            _enter(loop, caller)
    if task._state == _PENDING:  # not done (done() is a Python call on this Task)
        _register(task)  # asyncio.all_tasks() sees it, as it sees any pending Task
    return task


class _Replay:
    """Gives asyncio's step what the coroutine's first send gave (its value or exception),
    with the cancel request made during that send (if any) restored first, as the step would
    find it after calling send itself."""

    __slots__ = ("error", "must_cancel", "task", "yielded")

    def __init__(self, task: EagerTask, yielded: Any, error: BaseException | None) -> None:
        self.task, self.yielded, self.error = task, yielded, error
        self.must_cancel = task._must_cancel
        task._must_cancel = False  # as __step expects at its start (it would throw otherwise)

    def send(self, _: None) -> Any:
        self.task._must_cancel = self.must_cancel
        if self.error is not None:
            raise self.error
        return self.yielded
