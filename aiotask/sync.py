"""The event loop behind the sync API (`task.delay`, `app.send_task_sync`, `SyncResult`).

Plain code (Django and Flask views, management commands, scripts, threads) has no event loop.
Rather than a loop per call (`asyncio.run`: a connect and a close per send), one daemon thread
per process runs one event loop for the life of the process; callers hand it coroutines with
`loop.call_soon_threadsafe` and block on a lock until the answer. So every thread of the process
shares one connection set (the App keeps one per event loop), and a send costs one hop to the
loop thread plus the send itself.

Forks (gunicorn/uwsgi workers, multiprocessing): the child has no loop thread, only a copy of
the parent's loop object and sockets. An at-fork hook forgets them; the child's first sync call
starts its own thread and opens its own connections (the App forgets its inherited sets too).

At interpreter exit, an atexit hook stops the loop the way `asyncio.run` does: pending work
is cancelled and the App's connection sets close while the loop still runs.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aiotask.exceptions import SyncCallInEventLoop

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")

#: Seconds the exit hook waits for the loop thread to close its connections.
SHUTDOWN_TIMEOUT = 10.0


class LoopThread:
    """One event loop in one daemon thread; started lazily, restarted in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exit_hook = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop, if started (tests and diagnostics)."""
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop thread and return its result, from any thread without a
        running event loop. An exception in `coro` is raised here, unchanged."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            name = getattr(coro, "__qualname__", "the call")
            coro.close()  # never awaited: say why instead of warning about it
            raise SyncCallInEventLoop(
                f"{name}: the sync API (delay, send_task_sync, SyncResult) blocks, and this "
                "thread runs an event loop, which it would stall or deadlock: await the async "
                "API instead (`await task.send(...)`, `await app.send_task(...)`, "
                "`await result.get()`)"
            )
        loop = self._ensure()
        call = _Call(coro)
        loop.call_soon_threadsafe(call.start, loop)
        try:
            if not call.done.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError(f"no answer from the aiotask loop thread in {timeout}s")
        except BaseException:
            # A timeout or Ctrl-C here stops the work on the loop thread too.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                loop.call_soon_threadsafe(call.cancel)
            raise
        return call.outcome()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                self._register_exit_hook()
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name="aiotask-sync", daemon=True
                )
                thread.start()
                ready.wait()
                self._thread = thread
                self._loop = loop
            return self._loop

    def _register_exit_hook(self) -> None:
        """Stop the loop at exit, before concurrent.futures' own exit hook, which refuses new
        work (the SQLite connections close through their executors): threading's exit hooks
        run before atexit's, last first, so ours is registered after importing
        concurrent.futures.thread (which registers its hook). Done with the first start, not
        at import: an idle worker, which never uses the sync API, does not hold that module
        (and its queue) in memory."""
        if self._exit_hook:
            return
        import concurrent.futures.thread  # noqa: F401 - its exit hook first (see above)

        with contextlib.suppress(RuntimeError):  # the interpreter is already exiting
            getattr(threading, "_register_atexit", atexit.register)(self.stop)
        self._exit_hook = True

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_all(loop)
                # Closes the App's connection sets of this loop (see App.connect).
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop the loop, closing its connections; the next call starts a new one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout)

    def forget_after_fork(self) -> None:
        """In a forked child: the thread is gone and the loop shares the parent's file
        descriptors; drop both (never close them) and start afresh on the next call."""
        self._lock = threading.Lock()  # another thread may have held it at fork time
        self._loop = None
        self._thread = None


class _Call(Generic[T]):
    """One coroutine handed to the loop thread; the caller blocks on `done`.

    Lighter than `asyncio.run_coroutine_threadsafe` (no concurrent.futures.Future, whose
    Condition and chaining cost about a third of the hop): one lock, released by the task's
    done callback.
    """

    __slots__ = ("_error", "_result", "_task", "coro", "done")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.done = threading.Lock()
        self.done.acquire()
        self._task: asyncio.Task[T] | None = None
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop thread."""
        try:
            self._task = loop.create_task(self.coro)
        except BaseException as exc:  # pragma: no cover - create_task on a closing loop
            self.coro.close()
            self._error = exc
            self.done.release()
            return
        self._task.add_done_callback(self._finish)

    def _finish(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._error = concurrent.futures.CancelledError()
        else:
            self._error = task.exception()
            if self._error is None:
                self._result = task.result()
        self.done.release()

    def cancel(self) -> None:
        """On the loop thread, after `start` (call_soon_threadsafe keeps the order)."""
        if self._task is not None:
            self._task.cancel()

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


#: The process's loop thread.
LOOP = LoopThread()


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine of the async API from plain code, on the process's loop thread:
    `run_sync(chain(add.s(1, 2), add.s(3)).send())`. Thread-safe; raises
    SyncCallInEventLoop when called from a thread that runs an event loop."""
    return LOOP.run(coro, timeout)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=LOOP.forget_after_fork)
