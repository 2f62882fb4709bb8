"""Shared plumbing of the SQLite broker and backend: one connection with its thread, and wakeups.

Why a dedicated thread per connection (a one-worker executor) rather than `asyncio.to_thread`:
the loop's default executor is shared with user code (`to_thread` in tasks, blocking
libraries); a saturated default pool would stall every broker call behind it. Calls on the
thread run in FIFO order; a lock (`_use`) keeps them and the inline calls below from overlapping.

Small calls on the message path (a publish, a claim, an ack, a result's store or read) run on
the caller's own thread instead (`run_quick`), when the connection is idle and the call cannot
wait: the write lock is tried once, without SQLite's busy handler, and a call that would wait
goes to the thread as before. Each hop to the thread and back wakes two sleeping threads; on the
round trip of one task that was four hops, about a millisecond once the machine had idled.

A publish or a store wakes every waiter on the same file at once through `notify`: in this
process whatever event loop or thread it runs on, in other processes on the host through their
doorbells (UNIX datagram sockets, see _sqlite_wake). Waiters still poll with a backoff (POLL_MIN
to POLL_MAX) as the fallback, and for what no writer announces (a delay or a lease running out).

A deleted file (`rm aiotask.db*` under a running worker) would leave this connection on the
unlinked inode while producers create a new file at the path: the worker would poll a file
nobody writes to, silently. So a call looks at the path's inode (at most every CHECK_INTERVAL
seconds, one stat) and, when the file was deleted or replaced, reopens the path with a WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar, cast

from aiotask import _sqlite_checkpoint, _sqlite_wake
from aiotask._urls import parse_url, redact
from aiotask.exceptions import BrokerConnectionError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: First and longest pause between two polls of an idle file; reset after each hit.
POLL_MIN = 0.002
POLL_MAX = 0.1
#: With a doorbell (every writer rings it), the longest wait with nothing due: a safety net.
BELL_WAIT_MAX = 2.0
#: Longest time between two checks that the path still names the file this connection has open.
CHECK_INTERVAL = 0.1
#: Seconds a writer waits for the file lock before failing with "database is locked".
BUSY_TIMEOUT = 5.0
#: Pauses between two attempts at the write lock (see `begin`): the first, then doubling to
#: the longest, so a waiting writer never sleeps past a gap for long, nor spins.
WRITE_RETRY_MIN = 0.0002
WRITE_RETRY_MAX = 0.002
#: How long a writer retries every WRITE_RETRY_MIN before it starts doubling the pause: a
#: worker's claims and acks hold the lock for tens to hundreds of microseconds, so the next
#: gap is near; doubling from the start made 1 send in 100 wait 5-10 ms behind a busy worker.
WRITE_RETRY_FLAT = 0.01
#: Rows changed through one connection between two background checkpoints of its file
#: (_sqlite_checkpoint); 0 turns them off (SQLite then checkpoints at commit, as before).
CHECKPOINT_EVERY = 200
#: SQLite's own checkpoint at commit (its default is 1,000 pages), kept as the safety net:
#: the background checkpoints chase a busy writer and rarely leave the WAL fully copied,
#: which its restart needs, so at 2,000 pages (8 MiB) a commit finishes the job (little is
#: left to copy by then). Measured: the WAL peaks at ~3,000 pages in a busy drain, not ~1,500.
AUTOCHECKPOINT_PAGES = 2000
#: The most rows a call on the message path handles inline (`sized`, `run_quick`): a bigger
#: batch goes to the connection's thread, so the event loop is never held for long.
QUICK_ROWS = 256
#: RETURNING needs 3.35; json_each (one query for many ids) is built in since 3.38.
MIN_SQLITE = (3, 35, 0)


def resolve_path(url: str) -> str:
    """The absolute file of a sqlite:// URL, taken relative to the current directory now."""
    path = parse_url(url, allowed=frozenset({"sqlite"}), what="SQLite").sqlite_path
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"{redact(url)!r}: an SQLite broker needs a file shared by processes; use "
            "memory:// for an in-process broker, or sqlite:///path/to/file.db"
        )
    return os.path.abspath(path)


class Runner(Protocol):
    """`Connection.run` or `Connection.run_quick`."""

    async def __call__(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T: ...


class WouldBlock(Exception):
    """An inline call met a held lock: it was rolled back, and runs again on the thread."""


class Connection:
    """One sqlite3 connection, used from its own thread (`run`) or, one call at a time and
    only when that thread is idle, inline (`run_quick`)."""

    def __init__(self, path: str, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        #: (st_dev, st_ino) of the file `_conn` has open
        self._file: tuple[int, int] | None = None
        self._check_at = 0.0
        #: _replacements[path] when this connection last looked at the path
        self._replaced = 0
        self._reopening = False
        #: conn.total_changes at the last background checkpoint this connection asked for
        self._changes = 0
        #: held while a call uses the connection, on the thread or inline
        self._use = threading.Lock()
        #: calls handed to the thread and not finished (an inline call must not pass them)
        self._queued = 0
        self._queued_lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def open(self) -> None:
        """Open the file, set WAL mode, create the tables; a no-op when already open."""
        if self._executor is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigurationError(
                f"SQLite {sqlite3.sqlite_version} is too old for aiotask (needs 3.35+ for "
                "RETURNING): upgrade Python's sqlite3 or use Redis"
            )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="aiotask-sqlite")
        try:
            await self._submit(self._open_sync)
        except BaseException:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)
            raise

    def _open_sync(self) -> sqlite3.Connection:
        try:
            # Used from its thread and inline from the loop's, never at once (`_use`).
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                _wal(conn)
                # NORMAL in WAL mode: a commit survives a process crash, not a power cut.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA journal_size_limit=67108864")
                conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
                with transaction(conn):
                    _run_script(conn, self._schema)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise BrokerConnectionError(
                f"cannot open SQLite file {self.path}: {exc}: check that its directory exists "
                "and is writable, and that the file is an SQLite database"
            ) from exc
        self._conn = conn
        self._changes = 0
        try:
            self._file = _file_id(self.path)
        except OSError:
            self._file = None
        self._check_at = time.monotonic() + CHECK_INTERVAL
        self._replaced = _replacements.get(self.path, 0)
        return conn

    def recheck(self) -> None:
        """Look at the path's inode on the next call: a writer just announced something this
        connection may not see (the file it has open was deleted or replaced)."""
        self._check_at = 0.0

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run `fn(conn, *args)` on the connection's thread (opening it lazily)."""
        if self._executor is None:
            await self.open()
        return await self._submit(functools.partial(self._call, fn, *args, **kw))

    async def run_quick(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """`run` for a small call that may be retried whole: inline when that cannot wait."""
        done, result = self.attempt(fn, *args, **kw)
        if done:
            return cast("T", result)
        return await self.run(fn, *args, **kw)

    def sized(self, rows: int) -> Runner:
        """`run_quick` for a call on up to QUICK_ROWS rows, `run` for a bigger one."""
        return self.run_quick if rows <= QUICK_ROWS else self.run

    def attempt(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> tuple[bool, T | None]:
        """(True, fn(conn, *args)) run here and now, or (False, None) when it would wait.

        Inline only when nothing is queued for the thread (calls keep their order), the file
        needs no check, and the write lock is free at the first try. `fn` must be one
        transaction or a read: one that meets a held lock is rolled back and run again.
        """
        conn = self._conn
        if conn is None or not self._use.acquire(blocking=False):
            return False, None
        try:
            if self._queued or self._reopening or not self._same_file():
                return False, None
            conn.execute("PRAGMA busy_timeout=0")
            _here.inline = True
            try:
                result = fn(conn, *args, **kw)
            except WouldBlock:
                return False, None
            except sqlite3.Error as exc:
                if (
                    isinstance(exc, sqlite3.OperationalError)
                    and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                ):
                    return False, None
                raise self._failed(exc) from exc
            finally:
                _here.inline = False
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            self._count_changes(conn)
            return True, result
        finally:
            self._use.release()

    def submit_nowait(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue a call behind the pending ones without waiting (from a done-callback)."""
        if self._executor is not None:
            with contextlib.suppress(RuntimeError):  # already shut down: close() covered it
                self._queued_call(self._executor, functools.partial(self._call, fn))

    def _submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        if self._executor is None:
            raise BrokerConnectionError(f"SQLite file {self.path} is not open: call connect()")
        return asyncio.wrap_future(self._queued_call(self._executor, call))

    def _queued_call(self, executor: ThreadPoolExecutor, call: Callable[[], T]) -> Future[T]:
        """Hand `call` to the thread, counted in `_queued` until it is done or cancelled."""
        with self._queued_lock:
            self._queued += 1
        try:
            future = executor.submit(call)
        except BaseException:
            self._unqueue()
            raise
        future.add_done_callback(self._unqueue)
        return future

    def _unqueue(self, _future: object = None) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _call(self, fn: Callable[..., T], *args: object, **kw: object) -> T:
        with self._use:
            return self._call_held(fn, *args, **kw)

    def _call_held(self, fn: Callable[..., T], *args: object, **kw: object) -> T:
        conn = self._conn
        if conn is None:
            if not self._reopening:
                raise BrokerConnectionError(f"SQLite file {self.path} is closed: call connect()")
            conn = self._reopen()  # the last reopen failed: try again, failing loudly
        elif (
            time.monotonic() >= self._check_at or _replacements.get(self.path, 0) != self._replaced
        ):
            conn = self._follow_path(conn)
        try:
            result = fn(conn, *args, **kw)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self._count_changes(conn)
        return result

    def _count_changes(self, conn: sqlite3.Connection) -> None:
        if CHECKPOINT_EVERY and conn.total_changes - self._changes >= CHECKPOINT_EVERY:
            self._changes = conn.total_changes
            _sqlite_checkpoint.poke(self.path)

    def _failed(self, exc: sqlite3.Error) -> BrokerConnectionError:
        return BrokerConnectionError(
            f"SQLite file {self.path}: {exc}: is it on a local disk, writable, and not "
            f"held by a long transaction elsewhere?"
        )

    def _same_file(self) -> bool:
        """True when the path still names the file this connection has open (looked at
        when due, as `_follow_path` does); False when the thread must reopen it."""
        if time.monotonic() < self._check_at and _replacements.get(self.path, 0) == self._replaced:
            return True
        try:
            current = _file_id(self.path)
        except OSError:  # cannot tell: keep the file we have, as `_follow_path` does
            current = self._file
        if current is None or current != self._file:
            return False
        self._check_at = time.monotonic() + CHECK_INTERVAL
        self._replaced = _replacements.get(self.path, 0)
        return True

    def _follow_path(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """The connection to use: this one, or a new one when the path names another file now.

        Reopening by path (not failing) means a worker follows `rm aiotask.db*` plus a producer
        that recreates the file, and nothing sent to the new file waits forever. Closing the
        old connection does not touch the new file's -wal/-shm: SQLite skips its close-time
        checkpoint and WAL delete when the database file has moved (SQLITE_FCNTL_HAS_MOVED).
        """
        self._check_at = time.monotonic() + CHECK_INTERVAL
        self._replaced = _replacements.get(self.path, 0)
        try:
            current = _file_id(self.path)
        except OSError:  # cannot tell (permissions, I/O error): keep the file we have
            return conn
        if current is not None and current == self._file:
            return conn
        # Every other connection of this process to the path looks on its next call, before
        # it writes (a worker's result store would otherwise write into the deleted file).
        _replacements[self.path] = self._replaced = _replacements.get(self.path, 0) + 1
        log.warning(
            "SQLite file %s was deleted or replaced while open (%s); reopening it: what the old "
            "file held is gone, what producers write to the new one is consumed",
            self.path,
            "no file at the path now" if current is None else "another file at the path now",
        )
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        self._conn = None
        self._reopening = True
        return self._reopen()

    def _reopen(self) -> sqlite3.Connection:
        conn = self._open_sync()  # creates the file if nobody has yet, or raises
        self._reopening = False
        return conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        with self._use:
            self._reopening = False
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none (other errors raise)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. SQLite does not apply busy_timeout to this pragma, so two processes
    opening a new file at once can see "database is locked": retry up to BUSY_TIMEOUT."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)  # on the connection's own thread, never the event loop
            delay = min(delay * 2, 0.1)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our BEGIN IMMEDIATE; run statement by statement instead.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in short steps (WRITE_RETRY_MIN for the
    first WRITE_RETRY_FLAT seconds, then doubling to WRITE_RETRY_MAX).

    SQLite's own busy handler (sqlite3's `timeout`) sleeps 1, 2, 5, 10 ... up to 100 ms between
    attempts: a producer behind a worker that claims and acks back to back would wait in ever
    longer steps while the worker retakes the lock in the gaps (measured: sends of 100-180 ms
    behind a 10,000-message drain). Short steps catch the next gap; each attempt costs
    microseconds. The busy handler is off only for this statement: the other statements
    (reads, opening a file) keep it for the rare busy moments they can meet.
    """
    if getattr(_here, "inline", False):
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy_timeout is 0 already (`attempt`)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise WouldBlock from exc
            raise
        return
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = flat = 0.0
        delay = WRITE_RETRY_MIN
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                wall = time.monotonic()
                if not deadline:
                    deadline, flat = wall + BUSY_TIMEOUT, wall + WRITE_RETRY_FLAT
                elif wall >= deadline:
                    raise
                elif wall >= flat:
                    delay = min(delay * 2, WRITE_RETRY_MAX)
            time.sleep(delay)  # on the connection's own thread, never the event loop
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so no upgrade deadlock."""
    begin(conn)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


#: `inline` is True while this thread runs a call inline (`Connection.attempt`)
_here = threading.local()

#: path -> how many times a connection of this process found it deleted or replaced
_replacements: dict[str, int] = {}


def placeholders(n: int) -> str:
    """'?,?,?' for n parameters."""
    return ",".join("?" * n)


class Signal:
    """A wakeup for one waiter, settable from any thread or loop; fired by `notify`."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def fire(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """True when fired before `timeout` seconds passed."""
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


_listeners: dict[tuple[str, str], weakref.WeakSet[Signal]] = {}
_listeners_lock = threading.Lock()


def subscribe(path: str, topic: str, signal: Signal) -> None:
    """Have `notify(path, topic)` fire `signal` (held weakly), in this process or another."""
    with _listeners_lock:
        _listeners.setdefault((path, topic), weakref.WeakSet()).add(signal)
    _sqlite_wake.attach(path, topic, signal, signal.fire, signal.loop)


def unsubscribe(path: str, topic: str, signal: Signal) -> None:
    _sqlite_wake.detach(signal)
    with _listeners_lock:
        listeners = _listeners.get((path, topic))
        if listeners is not None:
            listeners.discard(signal)
            if not listeners:
                del _listeners[(path, topic)]


def notify(path: str, topic: str) -> None:
    """Wake every waiter on `topic` of the file at `path`: this process's in memory, the
    others' through their doorbells (see _sqlite_wake)."""
    with _listeners_lock:
        signals = list(_listeners.get((path, topic), ()))
    for signal in signals:
        signal.fire()
    _sqlite_wake.ringer.ring(path, topic)
