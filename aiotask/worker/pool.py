"""The process pool for plain-function tasks: one child per running job, one pipe pair per child.

Modelled on anyio's to_process, not on concurrent.futures: a ProcessPoolExecutor breaks as a
whole when one child dies, while here a dead child fails only its own job (WorkerLost) and the
next job starts a fresh child. Children are fresh interpreters started with fork+exec (the
`spawn` model, see `_pool_child`), lazily: a worker with only coroutine tasks starts none.

The parent waits on each child's reply pipe with `loop.add_reader` and on its exit with a
pidfd (Linux), so there is no thread per job or per child, nothing polls, and `close()` can
stay synchronous. Without pidfds (macOS) one executor thread per child waits for its exit.

The children's machinery (`_pool_child`, `_pool_process`, pickle) is imported with the first
sync task, not with the worker: an idle worker, or one with only coroutine tasks, never holds it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from aiotask import _log
from aiotask._log import get_logger
from aiotask.exceptions import (
    ConfigurationError,
    Reject,
    Retry,
    SerializationError,
    TaskRevoked,
    TimeLimitExceeded,
    WorkerLost,
)
from aiotask.serializer import exception_to_info, info_to_exception

if TYPE_CHECKING:
    from aiotask.context import TaskContext
    from aiotask.worker._pool_child import Ack, Done, Job, StateUpdate
    from aiotask.worker._pool_process import ChildProcess

log = get_logger(__name__)
#: Seconds a new child may take to import aiotask and report Ready.
STARTUP_TIMEOUT = 60.0
_TERMINATED = "terminated"


def _context_fields(ctx: TaskContext) -> dict[str, Any]:
    return {
        "id": ctx.id,
        "name": ctx.name,
        "args": ctx.args,
        "kwargs": ctx.kwargs,
        "retries": ctx.retries,
        "root_id": ctx.root_id,
        "parent_id": ctx.parent_id,
        "group_id": ctx.group_id,
        "headers": ctx.headers,
        "delivery_count": ctx.delivery_count,
        "result_ttl": ctx.result_ttl,
    }


def _unwrap(done: Done) -> Any:
    """A child's Done as the value, or the exception the executor should classify."""
    if done.retry is not None:
        spec = done.retry
        cause = info_to_exception(spec.cause) if spec.cause is not None else None
        raise Retry(cause, countdown=spec.countdown, eta=spec.eta, max_retries=spec.max_retries)
    if done.reject is not None:
        raise Reject(done.reject[0], requeue=done.reject[1])
    if done.error is not None:
        raise info_to_exception(done.error)
    return done.value


async def _store_state(ctx: TaskContext | None, update: StateUpdate) -> Ack:
    """Store a child's update_state through the parent's context (and so its backend)."""
    from aiotask.worker._pool_child import Ack

    try:
        if ctx is None:
            raise ConfigurationError("update_state needs bind=True")
        await ctx.update_state(update.state, update.meta)
    except Exception as exc:
        return Ack(exception_to_info(exc))
    return Ack()


class SyncPool:
    """Up to `processes` children (0: one per CPU), started on the first sync task."""

    def __init__(
        self, processes: int, max_tasks_per_child: int = 0, max_memory_per_child: int = 0
    ) -> None:
        self.processes = processes or os.cpu_count() or 1
        self.max_tasks_per_child = max_tasks_per_child or 0
        #: KB of resident memory after a job above which a child is replaced
        self.max_memory_per_child = max_memory_per_child or 0
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[ChildProcess] = []
        self._children: set[ChildProcess] = set()
        self._running: dict[str, ChildProcess] = {}
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the live children (for inspect and tests)."""
        return sorted(c.pid for c in self._children if not c.exited.done())

    async def run(
        self,
        module: str,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        task_id: str = "",
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        ctx: TaskContext | None = None,
    ) -> Any:
        """Run task `name` (registered by importing `module`) in a child; return its value.

        Raises what the task raised, WorkerLost if the child died, TimeLimitExceeded after the
        hard limit, TaskRevoked after terminate(). `ctx` (bind=True) becomes the first argument.
        """
        if self._closed:
            raise WorkerLost(f"task {name}[{task_id}]: the process pool is closed")
        from aiotask.worker._pool_child import Job

        if self._slots is None:
            self._slots = asyncio.Semaphore(self.processes)
        fields = _context_fields(ctx) if ctx is not None else None
        job = Job(module, name, args, kwargs, fields, task_id)
        label = f"{name}[{task_id}]" if task_id else name
        async with self._slots:
            child = await self._checkout()
            if task_id:
                self._running[task_id] = child
            try:
                done = await self._exchange(child, job, label, ctx, soft_time_limit, time_limit)
            except BaseException:
                self._discard(child)  # dead, killed, or abandoned mid-job: never reused
                raise
            finally:
                if self._running.get(task_id) is child:
                    del self._running[task_id]
            self._checkin(child, done.rss_kb)
        return _unwrap(done)

    async def _exchange(
        self,
        child: ChildProcess,
        job: Job,
        label: str,
        ctx: TaskContext | None,
        soft_time_limit: float | None,
        time_limit: float | None,
    ) -> Done:
        import pickle

        from aiotask.worker._pool_child import Done, StateUpdate
        from aiotask.worker._pool_process import ChildGone

        soft = None
        if soft_time_limit is not None:
            soft = child.loop.call_later(soft_time_limit, self._soft_limit, child, label)
        try:
            async with asyncio.timeout(time_limit):
                await child.send(job)
                while True:
                    reply = await child.next_frame()
                    if isinstance(reply, Done):
                        return reply
                    if not isinstance(reply, StateUpdate):
                        child.kill("protocol error")
                        raise WorkerLost(f"task {label}: unexpected {type(reply).__name__}")
                    await child.send(await _store_state(ctx, reply))
        except TimeoutError:
            child.kill("time limit")
            raise TimeLimitExceeded(
                f"task {label} exceeded its time limit of {time_limit}s: its pool process "
                f"{child.pid} was killed"
            ) from None
        except ChildGone:
            raise self._lost(child, label, await child.wait_exit()) from None
        except asyncio.CancelledError:
            child.kill("cancelled")  # cold shutdown: the job is abandoned, not finished
            await child.wait_exit()  # SIGKILL: milliseconds; no orphan outlives the call
            raise
        except (pickle.UnpicklingError, AttributeError, ImportError, EOFError) as exc:
            child.kill("protocol error")
            raise SerializationError(f"task {label}: cannot read its result: {exc}") from exc
        finally:
            if soft is not None:
                soft.cancel()

    def _soft_limit(self, child: ChildProcess, label: str) -> None:
        log.warning("task %s passed its soft time limit in pool process %d", label, child.pid)
        child.signal(signal.SIGUSR1)

    def _lost(self, child: ChildProcess, label: str, code: int) -> Exception:
        if child.killed_for == _TERMINATED:
            return TaskRevoked(
                f"task {label} was terminated (revoke with terminate=True): its pool process "
                f"{child.pid} was killed"
            )
        from aiotask.worker._pool_process import describe_exit

        how = describe_exit(code)
        log.error("pool process %d died running task %s (%s)", child.pid, label, how)
        return WorkerLost(
            f"task {label}: the pool process {child.pid} running it died ({how}); "
            "a new process takes its place"
        )

    async def terminate(self, task_id: str) -> bool:
        """Kill the child running `task_id` (its job raises TaskRevoked); False if none here."""
        child = self._running.get(task_id)
        if child is None:
            return False
        log.warning("terminating task %s: killing pool process %d", task_id, child.pid)
        child.kill(_TERMINATED)
        return True

    async def _checkout(self) -> ChildProcess:
        from aiotask.worker._pool_child import Init, Ready
        from aiotask.worker._pool_process import ChildGone

        while self._idle:
            child = self._idle.pop()
            if child.alive:
                child.busy = True
                return child
            self._discard(child)
        if self._closed:  # a job that waited for a slot while the pool closed
            raise WorkerLost("the process pool closed before this task could start")
        child = self._spawn()
        child.busy = True
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await child.send(Init(list(sys.path), os.getpid(), _log.current_settings))
                ready = await child.next_frame()
        except BaseException as exc:
            self._discard(child)
            if isinstance(exc, ChildGone | TimeoutError):
                how = "did not start in time" if isinstance(exc, TimeoutError) else "exited"
                raise WorkerLost(
                    f"pool process {child.pid} {how} at startup (see its stderr above)"
                ) from None
            raise
        if not isinstance(ready, Ready):
            self._discard(child)
            raise WorkerLost(f"pool process {child.pid} sent {type(ready).__name__} at startup")
        return child

    def _spawn(self) -> ChildProcess:
        from aiotask.worker._pool_child import boot
        from aiotask.worker._pool_process import ChildProcess

        # fork+exec of a fresh interpreter (no Python runs between fork and exec)
        popen = subprocess.Popen(
            [sys.executable, "-c", boot()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        child = ChildProcess(asyncio.get_running_loop(), popen)
        self._children.add(child)
        child.exited.add_done_callback(lambda _: self._on_exit(child))
        log.info("started pool process %d (%d/%d)", child.pid, len(self._children), self.processes)
        return child

    def _checkin(self, child: ChildProcess, rss_kb: int) -> None:
        child.busy = False
        child.jobs += 1
        reason = ""
        if self.max_tasks_per_child and child.jobs >= self.max_tasks_per_child:
            reason = f"{child.jobs} tasks"
        elif self.max_memory_per_child and rss_kb > self.max_memory_per_child:
            reason = f"{rss_kb} KB resident > {self.max_memory_per_child} KB"
        if not child.alive or self._closed:
            self._discard(child)
        elif reason:
            log.info("recycling pool process %d after %s", child.pid, reason)
            child.close_input()
        else:
            self._idle.append(child)

    def _discard(self, child: ChildProcess) -> None:
        child.busy = False
        if child in self._idle:
            self._idle.remove(child)
        if child.exited.done():
            self._forget(child)
        else:
            child.kill(child.killed_for or "discarded")  # _on_exit forgets it

    def _on_exit(self, child: ChildProcess) -> None:
        if child in self._idle:
            self._idle.remove(child)
        if not child.busy:  # a busy child's job sees EOF and discards it
            self._forget(child)

    def _forget(self, child: ChildProcess) -> None:
        self._children.discard(child)
        child.release()

    def close(self) -> None:
        """Stop every child: idle ones get EOF and exit; busy ones (abandoned) are killed.

        Blocks at most CLOSE_TIMEOUT; every child is reaped (no zombies) and its fds closed.
        """
        self._closed = True
        children = list(self._children)
        if not children:  # no sync task ever ran: the machinery was never imported
            self._idle.clear()
            return
        from aiotask.worker._pool_process import CLOSE_TIMEOUT

        for child in children:
            if child.busy:
                child.kill("worker shutdown")
            else:
                child.close_input()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for child in children:
            try:
                child.popen.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("pool process %d did not exit: killing it", child.pid)
                child.popen.kill()
                child.popen.wait()
            self._forget(child)
        self._idle.clear()

    async def aclose(self) -> None:
        """`close()` without blocking the event loop while children exit."""
        self._closed = True
        children = list(self._children)
        for child in children:
            if child.busy:
                child.kill("worker shutdown")
            else:
                child.close_input()  # kills after CLOSE_TIMEOUT
        if children:
            await asyncio.wait([child.exited for child in children])
        self.close()
