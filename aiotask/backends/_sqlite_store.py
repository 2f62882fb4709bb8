"""What the SQLite backend's stores (history, locks, coordination, schedule) set up alike:
their tables live in the result backend's file, made on first use, on its connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from aiotask._sqlite import transaction

if TYPE_CHECKING:
    import sqlite3

    from aiotask._sqlite import Connection


class SQLiteStore:
    """A store on the result backend's SQLite connection (its own thread). `SCHEMA` holds its
    `;`-separated CREATE ... IF NOT EXISTS statements, run in one transaction by the first call
    (a backend that never uses the store never makes its tables)."""

    SCHEMA: ClassVar[str]

    def __init__(self, db: Connection) -> None:
        self._db = db
        self._ready = False

    async def _conn(self) -> Connection:
        if not self._ready:
            await self._db.run(_create, self.SCHEMA)
            self._ready = True
        return self._db


def _create(conn: sqlite3.Connection, schema: str) -> None:
    with transaction(conn):
        for statement in schema.split(";"):
            if statement.strip():
                conn.execute(statement)
