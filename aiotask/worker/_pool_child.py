"""The child side of the process pool, and the frames both sides exchange.

A child is a fresh interpreter (`python -c ...`, never a fork of the asyncio parent). It talks to
the parent over two pipes with length-prefixed pickle frames: the parent's pipe replaces fd 0
and the child's reply pipe is a private dup of fd 1 (fd 0 becomes /dev/null and fd 1 is
pointed at stderr), so a task that prints or reads stdin cannot corrupt the protocol. A child
imports the task's module itself and looks the task up by name: functions never cross the pipe.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn

from aiotask import _log
from aiotask.app import find_task
from aiotask.context import TaskContext
from aiotask.exceptions import Reject, Retry, SerializationError, SoftTimeLimitExceeded
from aiotask.serializer import ExceptionInfo, exception_to_info, info_to_exception

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from types import FrameType

    from aiotask._log import LogSettings

HEADER = struct.Struct("!Q")
#: where this aiotask lives, so a child imports the same copy as its parent
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True, slots=True)
class Init:
    sys_path: list[str]
    parent_pid: int
    #: the worker's logging setup (CLI), repeated here so task logs look the same
    log: LogSettings | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """Sent once the child is set up: time limits count from the job, not from startup."""

    pid: int


@dataclass(frozen=True, slots=True)
class Job:
    module: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: TaskContext fields for bind=True tasks (no backend: states travel back as StateUpdate)
    context: dict[str, Any] | None = None
    #: for log records (task_name / task_id)
    task_id: str = ""


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """A bound task's `ctx.update_state()`; the parent stores it and answers with an Ack."""

    state: str
    meta: Any


@dataclass(frozen=True, slots=True)
class Ack:
    error: ExceptionInfo | None = None


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """`raise ctx.retry(...)` as data; the parent re-raises an equivalent Retry."""

    cause: ExceptionInfo | None
    countdown: float | None
    eta: datetime | None
    max_retries: int | None


@dataclass(frozen=True, slots=True)
class Done:
    """A finished job: exactly one of value / error / retry / reject is meaningful."""

    value: Any = None
    error: ExceptionInfo | None = None
    retry: RetrySpec | None = None
    reject: tuple[str, bool] | None = None
    #: resident set size after the job, for max_memory_per_child
    rss_kb: int = 0


def boot() -> str:
    """The `python -c` program of a child: ignore SIGINT/SIGTERM first, then serve.

    The worker decides when children stop, so a Ctrl-C or SIGTERM sent to the process group
    cannot kill a job that a warm shutdown is waiting for.
    """
    return (
        "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
        f"sys.path.insert(0, {_ROOT!r}); "
        "from aiotask.worker._pool_child import main; main()"
    )


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


class _Channel:
    """Blocking frame I/O on the child's two private pipe ends."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd

    def _read_exactly(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(self.rfd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> object | None:
        """The next frame, or None at EOF (the parent closed the pipe: exit)."""
        header = self._read_exactly(HEADER.size)
        if header is None:
            return None
        body = self._read_exactly(HEADER.unpack(header)[0])
        return None if body is None else pickle.loads(body)  # noqa: S301 - our parent's frames

    def send(self, obj: object) -> None:
        view = memoryview(frame(obj))
        while view:
            view = view[os.write(self.wfd, view) :]


class _Sent(Coroutine[Any, Any, None]):
    """What a child's update_state returns: the state is already stored; awaiting is a no-op."""

    def __await__(self) -> Generator[Any, None, None]:
        return (yield from ())

    def send(self, value: Any) -> Any:
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        raise typ if val is None else val

    def close(self) -> None:
        return None


class ChildContext(TaskContext):
    """A bind=True context inside a pool child: update_state goes to the parent over the pipe.

    It is sent (and stored by the parent) at call time, so a plain function calls
    `ctx.update_state("PROGRESS", meta)` without `await`.
    """

    __slots__ = ("_report",)

    def __init__(self, fields: dict[str, Any], report: Callable[[str, Any], None]) -> None:
        super().__init__(**fields)
        self._report = report

    def update_state(self, state: str, meta: Any = None) -> Coroutine[Any, Any, None]:
        self._report(state, meta)
        return _Sent()


class _Child:
    """The child's main loop: one job at a time, in the main thread (signals land there)."""

    def __init__(self, channel: _Channel, log: LogSettings | None = None) -> None:
        self.channel = channel
        self.running = False
        self.modules: set[str] = set()
        self.log = log
        #: (task name, task id) of the job running now, for log records
        self.job: tuple[str, str] | None = None

    def current(self) -> tuple[str, str] | None:
        return self.job

    def setup_logging(self) -> None:
        """Repeat the worker's setup; after importing a task module again when the user's own
        configuration is kept (it may have replaced the handlers: they get our filter)."""
        log = self.log
        if log is None:
            return
        try:
            _log.configure(
                log.level, fmt=log.fmt, logfile=log.logfile, keep=log.keep, current=self.current
            )
        except OSError as exc:  # the log file went away: keep running, log on stderr
            _log.configure(log.level, fmt=log.fmt, current=self.current)
            _log.get_logger(__name__).warning("cannot open log file %s: %s", log.logfile, exc)

    def on_soft_limit(self, signum: int, frame: FrameType | None) -> None:
        if self.running:  # late signals (job already done) are ignored
            raise SoftTimeLimitExceeded("soft time limit exceeded")

    def report_state(self, state: str, meta: Any) -> None:
        # the ack round trip must not be cut by the soft-limit signal: it would leave a
        # frame unread; a signal that arrives meanwhile is delivered right after
        mask = {signal.SIGUSR1}
        signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        try:
            self.channel.send(StateUpdate(state, meta))
            ack = self.channel.recv()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)
        if not isinstance(ack, Ack):
            _exit_protocol_error(ack)
        if ack.error is not None:
            raise info_to_exception(ack.error)

    def run(self, job: Job) -> Done:
        try:
            if job.module not in self.modules:
                importlib.import_module(job.module)
                self.modules.add(job.module)
                if self.log is not None and self.log.keep:
                    self.setup_logging()
            fn = find_task(job.name).fn
            args = list(job.args)
            if job.context is not None:
                args.insert(0, ChildContext(job.context, self.report_state))
            self.running = True
            self.job = (job.name, job.task_id)
            try:
                value = fn(*args, **job.kwargs)
            finally:
                self.running = False
                self.job = None
        except Retry as exc:
            cause = exception_to_info(exc.exc) if exc.exc is not None else None
            return Done(retry=RetrySpec(cause, exc.countdown, exc.eta, exc.max_retries))
        except Reject as exc:
            return Done(reject=(exc.reason, exc.requeue))
        except BaseException as exc:
            return Done(error=exception_to_info(exc))
        return Done(value=value)

    def serve(self) -> None:
        while True:
            job = self.channel.recv()
            if job is None:
                return
            if not isinstance(job, Job):
                _exit_protocol_error(job)
            done = self.run(job)
            self.running = False  # even if the soft-limit signal cut run()'s own finally
            done = replace(done, rss_kb=rss_kb())
            try:
                self.channel.send(done)
            except Exception as exc:  # pickling a user value can raise anything
                err = SerializationError(
                    f"task {job.name} returned a value the pool cannot send back: {exc}"
                )
                self.channel.send(Done(error=exception_to_info(err), rss_kb=done.rss_kb))


def rss_kb() -> int:
    """The current resident set size in KB (/proc on Linux, else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1])
        return resident * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def _exit_protocol_error(got: object) -> NoReturn:
    print(f"aiotask pool child: unexpected frame {type(got).__name__}", file=sys.stderr)  # noqa: T201
    os._exit(70)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this child if the worker dies (so a kill -9'd worker leaves no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main() -> None:
    """Entry point of a pool child (see boot())."""
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    channel = _Channel(rfd, wfd)
    init = channel.recv()
    if not isinstance(init, Init):
        _exit_protocol_error(init)
    _die_with_parent(init.parent_pid)
    sys.path[:] = init.sys_path
    child = _Child(channel, init.log)
    child.setup_logging()
    signal.signal(signal.SIGUSR1, child.on_soft_limit)
    channel.send(Ready(os.getpid()))
    child.serve()
