"""Unique/debounce locks in the SQLite file: one row per lock, each operation one
`BEGIN IMMEDIATE` transaction (the file lock makes it atomic across processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._sqlite import transaction
from aiotask._time import now
from aiotask.backends._sqlite_store import SQLiteStore

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

    from aiotask._sqlite import Connection

SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL)
"""


class SQLiteLockStore(SQLiteStore):
    """LockStore on the result backend's SQLite connection (its own thread)."""

    SCHEMA = SCHEMA

    def __init__(self, db: Connection, prefix: str) -> None:
        super().__init__(db)
        self._prefix = prefix

    async def acquire(self, name: str, owner: str, ttl: float) -> str | None:
        return await (await self._conn()).run(_acquire, self._prefix + name, owner, ttl)

    async def swap(self, name: str, expect: str, owner: str, ttl: float) -> bool:
        return await (await self._conn()).run(_swap, self._prefix + name, expect, owner, ttl)

    async def put(self, name: str, owner: str, ttl: float) -> None:
        await (await self._conn()).run(_put, self._prefix + name, owner, ttl)

    async def get(self, name: str) -> str | None:
        return await (await self._conn()).run(_get, self._prefix + name)

    async def release(self, locks: Sequence[tuple[str, str]]) -> None:
        if locks:
            rows = [(self._prefix + name, owner) for name, owner in locks]
            await (await self._conn()).run(_release, rows)


def _holder(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute(
        "SELECT owner FROM locks WHERE name = ? AND expires > ?", (name, now())
    ).fetchone()
    return None if row is None else str(row[0])


def _acquire(conn: sqlite3.Connection, name: str, owner: str, ttl: float) -> str | None:
    with transaction(conn):
        held = _holder(conn, name)
        if held is not None:
            return held
        conn.execute(
            "INSERT OR REPLACE INTO locks (name, owner, expires) VALUES (?, ?, ?)",
            (name, owner, now() + ttl),
        )
        return None


def _swap(conn: sqlite3.Connection, name: str, expect: str, owner: str, ttl: float) -> bool:
    with transaction(conn):
        if _holder(conn, name) != expect:
            return False
        conn.execute(
            "UPDATE locks SET owner = ?, expires = ? WHERE name = ?", (owner, now() + ttl, name)
        )
        return True


def _put(conn: sqlite3.Connection, name: str, owner: str, ttl: float) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO locks (name, owner, expires) VALUES (?, ?, ?)",
            (name, owner, now() + ttl),
        )


def _get(conn: sqlite3.Connection, name: str) -> str | None:
    return _holder(conn, name)


def _release(conn: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
    with transaction(conn):
        conn.executemany("DELETE FROM locks WHERE name = ? AND owner = ?", rows)
        # expired rows of other locks go too: the table stays the size of the live locks
        conn.execute("DELETE FROM locks WHERE expires <= ?", (now(),))
