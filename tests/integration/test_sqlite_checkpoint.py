"""Checkpoints of an SQLite file run on a thread of their own, not in a commit.

Real files in tmp_path, the broker's own `_sqlite.Connection`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import TYPE_CHECKING

from aiotask import _sqlite, _sqlite_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB);"
PAGE = 4096


def _write(conn: sqlite3.Connection, rows: int) -> None:
    with _sqlite.transaction(conn):
        conn.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(2000),)] * rows)


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the checkpoint thread did not run within 30 s"
        time.sleep(0.01)


def _wal_pages(path: str) -> int:
    return os.path.getsize(path + "-wal") // PAGE


async def test_commits_leave_the_checkpoint_to_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the background checkpoints off, 2,000 pages of commits do not checkpoint (SQLite's
    default would at 1,000 and reuse the WAL from its start): no commit pays for a copy."""
    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", 0)
    path = str(tmp_path / "ck.db")
    conn = _sqlite.Connection(path, SCHEMA)
    await conn.open()
    try:
        for _ in range(300):  # 300 commits of 10 rows of 2 KB: about 2,000 pages
            await conn.run(_write, 10)
        assert _wal_pages(path) > 1500
        auto = await conn.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        assert auto == _sqlite.AUTOCHECKPOINT_PAGES
    finally:
        await conn.close()


async def test_the_background_thread_checkpoints_every_few_hundred_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "ck.db")
    conn = _sqlite.Connection(path, SCHEMA)
    await conn.open()
    checkpointer = _sqlite_checkpoint.checkpointer(path)
    try:
        await conn.run(_write, _sqlite.CHECKPOINT_EVERY - 1)
        assert checkpointer.runs == 0  # not yet asked
        for _ in range(5):  # 1,000 rows: 5 pokes (runs coalesce while one is under way)
            await conn.run(_write, _sqlite.CHECKPOINT_EVERY)
        _wait_for(lambda: checkpointer.runs >= 1)
        assert checkpointer.last is not None
        busy, frames, done = checkpointer.last
        assert busy == 0 and 0 < done <= frames  # it copied frames back to the database
    finally:
        await conn.close()


def test_a_deleted_file_is_not_recreated_by_its_checkpoint(tmp_path: Path) -> None:
    path = str(tmp_path / "gone.db")
    checkpointer = _sqlite_checkpoint.Checkpointer(path)
    checkpointer.poke()
    _wait_for(lambda: checkpointer.skipped >= 1)
    assert not os.path.exists(path)
    assert checkpointer.runs == 0


def test_an_idle_thread_ends_and_the_next_poke_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite_checkpoint, "IDLE_EXIT", 0.05)
    path = str(tmp_path / "idle.db")
    sqlite3.connect(path).close()
    checkpointer = _sqlite_checkpoint.Checkpointer(path)
    checkpointer.poke()
    _wait_for(lambda: checkpointer.runs + checkpointer.skipped >= 1)
    _wait_for(lambda: not checkpointer.running)  # ended after IDLE_EXIT without a poke
    checkpointer.poke()
    assert checkpointer.running
    _wait_for(lambda: checkpointer.runs + checkpointer.skipped >= 2)
