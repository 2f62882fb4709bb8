"""The coordination store in the SQLite file: GCRA and slot leases, one IMMEDIATE transaction
per call (the write lock is taken first, so two workers never read the same TAT)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiotask._sqlite import transaction
from aiotask.backends._sqlite_store import SQLiteStore
from aiotask.coordination.concurrency import SlotTable
from aiotask.coordination.ratelimit import RESERVE_AHEAD, Grant, gcra

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

    from aiotask._sqlite import Connection
    from aiotask.coordination.concurrency import Slot

SCHEMA = """
CREATE TABLE IF NOT EXISTS aiotask_coord_rate (
    name TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS aiotask_coord_slots (
    name TEXT NOT NULL, token TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (name, token))
"""


class SQLiteCoordinationStore(SQLiteStore):
    """CoordinationStore on the result backend's SQLite connection (its own thread).

    The clock is the machine's wall clock: every process sharing the file shares it.
    """

    SCHEMA = SCHEMA

    def __init__(self, db: Connection, namespace: str) -> None:
        super().__init__(db)
        self._ns = namespace

    async def take_rate(
        self, key: str, interval: float, burst: int = 1, ahead: float = RESERVE_AHEAD
    ) -> Grant:
        db = await self._conn()
        return await db.run(_take_rate, f"{self._ns}:{key}", interval, burst, ahead)

    async def acquire_slot(self, key: str, limit: int, token: str, lease: float) -> bool:
        db = await self._conn()
        return await db.run(_acquire, f"{self._ns}:{key}", limit, token, lease)

    async def renew_slots(self, slots: Sequence[Slot], lease: float) -> list[bool]:
        if not slots:
            return []
        db = await self._conn()
        return await db.run(_renew, [(f"{self._ns}:{k}", t) for k, t in slots], lease)

    async def release_slots(self, slots: Sequence[Slot]) -> None:
        if slots:
            db = await self._conn()
            await db.run(_release, [(f"{self._ns}:{k}", t) for k, t in slots])

    async def slots_in_use(self, key: str) -> int:
        db = await self._conn()
        return await db.run(_count, f"{self._ns}:{key}")


# --- the functions below run on the connection's thread --------------------------------


def _take_rate(
    conn: sqlite3.Connection, name: str, interval: float, burst: int, ahead: float
) -> Grant:
    with transaction(conn):
        row = conn.execute("SELECT tat FROM aiotask_coord_rate WHERE name = ?", (name,)).fetchone()
        now = time.time()
        tat, grant = gcra(row[0] if row else None, now, interval, burst, ahead)
        if tat is not None:
            conn.execute(
                "INSERT INTO aiotask_coord_rate (name, tat) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET tat = excluded.tat",
                (name, tat),
            )
        # a TAT in the past means "no debt": forget it, so idle keys do not pile up
        conn.execute("DELETE FROM aiotask_coord_rate WHERE tat < ?", (now - 60.0,))
    return grant


def _load(conn: sqlite3.Connection, names: set[str], now: float) -> SlotTable:
    """The live leases of `names` (expired rows deleted first), as a SlotTable."""
    table = SlotTable()
    for name in names:
        conn.execute("DELETE FROM aiotask_coord_slots WHERE name = ? AND expires <= ?", (name, now))
        rows = conn.execute(
            "SELECT token, expires FROM aiotask_coord_slots WHERE name = ?", (name,)
        ).fetchall()
        if rows:
            table.leases[name] = dict(rows)
    return table


def _acquire(conn: sqlite3.Connection, name: str, limit: int, token: str, lease: float) -> bool:
    with transaction(conn):
        now = time.time()
        if not _load(conn, {name}, now).acquire(name, limit, token, lease, now):
            return False
        conn.execute(
            "INSERT INTO aiotask_coord_slots (name, token, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (name, token) DO UPDATE SET expires = excluded.expires",
            (name, token, now + lease),
        )
        return True


def _renew(conn: sqlite3.Connection, slots: list[tuple[str, str]], lease: float) -> list[bool]:
    with transaction(conn):
        now = time.time()
        out = []
        for name, token in slots:
            cur = conn.execute(
                "UPDATE aiotask_coord_slots SET expires = ? "
                "WHERE name = ? AND token = ? AND expires > ?",
                (now + lease, name, token, now),
            )
            out.append(cur.rowcount == 1)
        return out


def _release(conn: sqlite3.Connection, slots: list[tuple[str, str]]) -> None:
    with transaction(conn):
        conn.executemany("DELETE FROM aiotask_coord_slots WHERE name = ? AND token = ?", slots)


def _count(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM aiotask_coord_slots WHERE name = ? AND expires > ?",
        (name, time.time()),
    ).fetchone()
    return int(row[0])
