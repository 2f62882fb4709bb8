"""The parent's handle on one pool child: its non-blocking pipe ends and its exit, on the loop.

Replies are read with `loop.add_reader` and the exit is seen through a pidfd (Linux >= 5.3), so
nothing polls and no thread waits per job or per child; elsewhere one executor thread per child
waits for its exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
from typing import TYPE_CHECKING

from aiotask.worker._pool_child import HEADER, frame

if TYPE_CHECKING:
    import subprocess

#: Seconds a child gets to exit after its input closes (recycle, shutdown) before SIGKILL.
CLOSE_TIMEOUT = 2.0


class ChildGone(Exception):
    """The child's reply pipe closed: it exited or was killed."""


class ChildProcess:
    """One child process and its non-blocking pipe ends on the parent's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdin is not None  # noqa: S101 - started with PIPEs
        assert popen.stdout is not None  # noqa: S101
        self.loop, self.popen, self.pid = loop, popen, popen.pid
        self.stdin, self.stdout = popen.stdin, popen.stdout
        self.rfd, self.wfd = self.stdout.fileno(), self.stdin.fileno()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self.buffer = bytearray()
        self.eof = False
        self.busy = False
        self.jobs = 0
        #: why the parent killed it, so its job fails with the right error
        self.killed_for: str | None = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._writable_waiter: asyncio.Future[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        loop.add_reader(self.rfd, self._on_readable)
        self.pidfd = -1
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: one thread waits instead
            waiting = loop.run_in_executor(None, popen.wait)
            waiting.add_done_callback(lambda _: self._on_exit())
        else:
            loop.add_reader(self.pidfd, self._on_exit)

    @property
    def alive(self) -> bool:
        return not (self.eof or self.exited.done() or self.killed_for)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.rfd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.buffer += data
        else:
            self.eof = True
            self.loop.remove_reader(self.rfd)
        self._wake()

    def _on_exit(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        if not self.exited.done():
            self.exited.set_result(self.popen.wait())  # already exited: reaps, never blocks

    async def next_frame(self) -> object:
        """The next frame from the child; raises ChildGone once its pipe is closed and drained."""
        while True:
            if len(self.buffer) >= HEADER.size:
                end = HEADER.size + HEADER.unpack_from(self.buffer)[0]
                if len(self.buffer) >= end:
                    body = bytes(self.buffer[HEADER.size : end])
                    del self.buffer[:end]
                    return pickle.loads(body)  # noqa: S301 - written by our own child
            if self.eof:
                raise ChildGone
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, obj: object) -> None:
        view = memoryview(frame(obj))
        while view:
            if self.stdin.closed:  # never write to the number of a closed (maybe reused) fd
                raise ChildGone
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                await self._writable()
            except OSError:  # EPIPE: the child is gone
                raise ChildGone from None

    async def _writable(self) -> None:
        self._writable_waiter = self.loop.create_future()
        self.loop.add_writer(self.wfd, self._wake_writer)
        try:
            await self._writable_waiter
        finally:
            self._writable_waiter = None
            if not self.stdin.closed:
                self.loop.remove_writer(self.wfd)

    def _wake_writer(self) -> None:
        if self._writable_waiter is not None and not self._writable_waiter.done():
            self._writable_waiter.set_result(None)

    def _close_stdin(self) -> None:
        if not self.stdin.closed:
            self.loop.remove_writer(self.wfd)
            self._wake_writer()
            self.stdin.close()

    async def wait_exit(self) -> int:
        """The exit status once the pipe closed; a child that closed it but lives is killed."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                return await asyncio.shield(self.exited)
        except TimeoutError:
            self.kill("closed its pipe but kept running")
            return await self.exited

    def signal(self, signum: int) -> None:
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self, reason: str) -> None:
        self.killed_for = self.killed_for or reason
        self.signal(signal.SIGKILL)

    def close_input(self) -> None:
        """EOF on the child's input: it exits when idle; SIGKILL if it has not in time."""
        self._close_stdin()
        if self._kill_timer is None and not self.exited.done():
            self._kill_timer = self.loop.call_later(CLOSE_TIMEOUT, self.kill, "did not exit")

    def release(self) -> None:
        """Drop the fds and wake a pending reader (the process has been reaped or is gone)."""
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self.eof:
            self.eof = True
            self.loop.remove_reader(self.rfd)
            self._wake()
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        if not self.exited.done() and self.popen.returncode is not None:
            self.exited.set_result(self.popen.returncode)
        self._close_stdin()
        self.stdout.close()


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"killed by {name}; the out-of-memory killer sends this too"
    return f"killed by {name}"
