"""Checkpoints of an SQLite file from a thread of their own, so that no commit pays for one.

SQLite checkpoints at the commit that grows the WAL past `wal_autocheckpoint` pages, on the
committing connection: behind a worker draining a backlog, a producer's send or the worker's
own claim then waited for the copy and its fsyncs (0.3-31 ms measured), which set the p99 of
another tenant's wait. A PASSIVE checkpoint runs beside readers and writers, so a thread per
file and process takes the copy off their path; `_sqlite.Connection` pokes it every
CHECKPOINT_EVERY changed rows and keeps SQLite's own checkpoint as a distant safety net.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import urllib.parse

log = logging.getLogger(__name__)

#: Seconds a file's thread waits for the next poke before it ends (the next poke starts one).
IDLE_EXIT = 60.0


class Checkpointer:
    """One file's background checkpoints. Waits on an event between runs (no polling), and
    ends after IDLE_EXIT seconds without a poke, so an idle process keeps no thread; opens the
    file for each run with `mode=rw` (never creates one), so a deleted or replaced file leaves
    no handle behind."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: completed and failed runs, and the last one's (busy, WAL frames, frames checkpointed)
        self.runs = self.skipped = 0
        self.last: tuple[int, int, int] | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def poke(self) -> None:
        with self._lock:  # set under the lock: a thread deciding to end sees it
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="aiotask-sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=rw"
        while True:
            if not self._wake.wait(IDLE_EXIT):
                with self._lock:
                    if not self._wake.is_set():
                        self._thread = None
                        return
            self._wake.clear()
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                finally:
                    conn.close()
            except sqlite3.Error as exc:  # busy or gone: the next poke (or a commit) does it
                log.debug("background checkpoint of %s skipped: %s", self.path, exc)
                self.skipped += 1
                continue
            self.last = (int(row[0]), int(row[1]), int(row[2]))
            self.runs += 1


_checkpointers: dict[str, Checkpointer] = {}
_lock = threading.Lock()


def checkpointer(path: str) -> Checkpointer:
    with _lock:
        found = _checkpointers.get(path)
        if found is None:
            found = _checkpointers[path] = Checkpointer(path)
        return found


def poke(path: str) -> None:
    """Ask for a checkpoint of `path` soon, from its thread; returns at once."""
    checkpointer(path).poke()
