"""Cross-process wakeups for an SQLite file: one UNIX datagram socket ("doorbell") per waiter.

SQLite has no notification channel, and polling made the embedded default slow to answer: a
worker or a producer that had idled a while looked again only after its backoff (up to 0.1 s).
So every waiter binds a datagram socket in a directory beside the file (`<file>-wake/`, or a
hashed directory under the temp dir when that path would not fit a UNIX socket address), named
`<topic>.<pid>.<n>`, and its event loop reads it (`add_reader`: no thread, no polling). After a
commit, a writer sends one byte to every socket of the topic that belongs to another process
(its own waiters are woken in memory). The listing is cached and read again only when the
directory changes (one `stat` per ring).

Nothing depends on a bell arriving: waiters still poll as a fallback (other hosts sharing a
network file system, a read-only directory, a full socket buffer). A socket left behind by a
killed process refuses the datagram, and the ringer removes it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import socket
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

#: The longest socket path we bind; AF_UNIX allows 107 bytes on Linux, 103 on macOS.
MAX_ADDRESS = 100
#: Room kept for `<topic>.<pid>.<n>` after the directory.
_NAME_ROOM = 40

#: A listing is cached once the directory has not changed for this long (mtime granularity).
SETTLED_NS = 50_000_000

_ids = itertools.count()


def wake_dir(path: str) -> str:
    """Where the doorbells of the SQLite file `path` live (the same in every process)."""
    beside = f"{path}-wake"
    if len(beside.encode()) + _NAME_ROOM <= MAX_ADDRESS:
        return beside
    import hashlib  # only for long paths: tempfile imports shutil, bz2, lzma (0.7 MiB of RSS)
    import tempfile

    digest = hashlib.sha256(path.encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), "aiotask-wake", digest)


class Doorbell:
    """A bound datagram socket read by one event loop; any datagram fires `fire` there."""

    def __init__(
        self, path: str, topic: str, fire: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.directory = wake_dir(path)
        self.address = os.path.join(self.directory, f"{topic}.{os.getpid()}.{next(_ids)}")
        self._fire = fire
        self._loop = loop
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            self._bind(sock)
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def _bind(self, sock: socket.socket) -> None:
        for attempt in range(3):
            os.makedirs(self.directory, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # left by a dead process whose pid came round again
            try:
                sock.bind(self.address)
                return
            except FileNotFoundError:
                if attempt == 2:  # the last waiter of another process removed the directory
                    raise

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:  # many rings while busy are one wakeup
                sock.recv(16)
        self._fire()

    def close(self) -> None:
        """Stop reading and remove the socket; safe from any thread, after the loop closed."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        with contextlib.suppress(OSError):  # not empty: other waiters remain
            os.rmdir(self.directory)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop or not self._loop.is_running():
            self._loop.remove_reader(sock.fileno())
            sock.close()
            return
        try:
            self._loop.call_soon_threadsafe(_unread, self._loop, sock)
        except RuntimeError:  # closed meanwhile
            sock.close()


def _unread(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    loop.remove_reader(sock.fileno())
    sock.close()


class Ringer:
    """Sends the bells of one process: a cached listing per directory, one unbound socket."""

    def __init__(self) -> None:
        self._pid = -1
        self._sock: socket.socket | None = None
        #: directory -> (its mtime_ns when listed, the socket names in it)
        self._listing: dict[str, tuple[int, list[str]]] = {}

    def _sender(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():  # a forked child makes its own
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sock, self._pid, self._listing = sock, os.getpid(), {}
        return self._sock

    def ring(self, path: str, topic: str) -> None:
        """Wake the waiters of other processes on `topic` of the file at `path`."""
        directory = wake_dir(path)
        try:
            stamp = os.stat(directory).st_mtime_ns
        except OSError:
            return  # nobody ever waited on this file
        sock = self._sender()
        prefix, own = f"{topic}.", f".{self._pid}."
        for name in self._names(directory, stamp):
            if not name.startswith(prefix) or own in name:
                continue
            address = os.path.join(directory, name)
            try:
                sock.sendto(b"!", address)
            except (BlockingIOError, InterruptedError):
                pass  # its buffer is full of rings it has not read yet: it will wake
            except ConnectionRefusedError:
                _remove_stale(address)
            except FileNotFoundError:
                pass  # removed since the listing; the next ring lists again
            except OSError as exc:  # never fail the commit it announces: the waiter polls
                log.debug("cannot ring %s: %s", address, exc)

    def _names(self, directory: str, stamp: int) -> list[str]:
        cached = self._listing.get(directory)
        if cached is None or cached[0] != stamp:
            try:
                names = os.listdir(directory)
            except OSError:
                return []
            # A directory's mtime ticks coarsely (a few ms): a socket bound in the same tick
            # as this listing would leave the stamp unchanged. Trust only settled listings.
            if time.time_ns() - stamp > SETTLED_NS:
                self._listing[directory] = (stamp, names)
            return names
        return cached[1]

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _remove_stale(address: str) -> None:
    """Nobody is bound to it: its process died without closing it."""
    with contextlib.suppress(OSError):
        os.unlink(address)


ringer = Ringer()
atexit.register(ringer.close)

#: Doorbells by the Signal they fire; they close with their Signal.
_bells: weakref.WeakKeyDictionary[object, Doorbell] = weakref.WeakKeyDictionary()


def attach(
    path: str, topic: str, owner: object, fire: Callable[[], None], loop: asyncio.AbstractEventLoop
) -> None:
    """Give `owner` (a Signal) a doorbell; without one (no writable directory) it only polls."""
    if owner in _bells:
        return
    method = weakref.WeakMethod(fire)

    def ring() -> None:  # the bell must not keep its Signal alive
        live = method()
        if live is not None:
            live()

    try:
        bell = Doorbell(path, topic, ring, loop)
    except OSError as exc:
        log.debug("no cross-process wakeups for %s (%s): polling only", path, exc)
        return
    _bells[owner] = bell
    weakref.finalize(owner, bell.close)


def has_bell(owner: object) -> bool:
    """Whether `owner` (a Signal) is rung by other processes, so it may wait long."""
    return owner in _bells


def detach(owner: object) -> None:
    bell = _bells.pop(owner, None)
    if bell is not None:
        bell.close()
