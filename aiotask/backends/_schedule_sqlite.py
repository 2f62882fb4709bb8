"""The beat store in the SQLite file: four tables, each claim batch in one transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._sqlite import placeholders, transaction
from aiotask.backends._sqlite_store import SQLiteStore
from aiotask.beat.store import StoredState

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

    from aiotask._sqlite import Connection
    from aiotask.beat.store import Claim

SCHEMA = """
CREATE TABLE IF NOT EXISTS beat_entries (
    app TEXT NOT NULL, name TEXT NOT NULL, blob BLOB NOT NULL, paused INTEGER NOT NULL DEFAULT 0,
    dynamic INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (app, name));
CREATE TABLE IF NOT EXISTS beat_marks (
    app TEXT NOT NULL, name TEXT NOT NULL, mark INTEGER NOT NULL, state BLOB,
    PRIMARY KEY (app, name));
CREATE TABLE IF NOT EXISTS beat_skips (
    app TEXT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (app, name, reason));
"""


class SQLiteScheduleStore(SQLiteStore):
    """ScheduleStore on the result backend's SQLite connection (its own thread)."""

    SCHEMA = SCHEMA

    def __init__(self, db: Connection, app_name: str) -> None:
        super().__init__(db)
        self._app = app_name

    async def entries(self) -> dict[str, bytes]:
        return await (await self._conn()).run(_entries, self._app)

    async def put_entry(self, name: str, blob: bytes) -> None:
        await (await self._conn()).run(_put_entry, self._app, name, blob)

    async def remove_entry(self, name: str) -> bool:
        return await (await self._conn()).run(_remove_entry, self._app, name)

    async def paused(self) -> set[str]:
        return await (await self._conn()).run(_paused, self._app)

    async def set_paused(self, name: str, paused: bool) -> None:
        await (await self._conn()).run(_set_paused, self._app, name, paused)

    async def states(self, names: Sequence[str]) -> dict[str, StoredState]:
        return await (await self._conn()).run(_states, self._app, list(names))

    async def skip_counts(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        return await (await self._conn()).run(_skip_counts, self._app, list(names))

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        return await (await self._conn()).run(_claim, self._app, list(claims))

    async def settle(
        self, confirms: Sequence[tuple[str, int, bytes]], skips: Sequence[tuple[str, str, int]]
    ) -> None:
        await (await self._conn()).run(_settle, self._app, list(confirms), list(skips))


def _entries(conn: sqlite3.Connection, app: str) -> dict[str, bytes]:
    rows = conn.execute("SELECT name, blob FROM beat_entries WHERE app = ? AND dynamic = 1", (app,))
    return {name: bytes(blob) for name, blob in rows}


def _put_entry(conn: sqlite3.Connection, app: str, name: str, blob: bytes) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO beat_entries (app, name, blob, dynamic) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (app, name) DO UPDATE SET blob = excluded.blob, dynamic = 1",
            (app, name, blob),
        )


def _remove_entry(conn: sqlite3.Connection, app: str, name: str) -> bool:
    with transaction(conn):
        gone = conn.execute(
            "DELETE FROM beat_entries WHERE app = ? AND name = ? AND dynamic = 1", (app, name)
        ).rowcount
        conn.execute("DELETE FROM beat_entries WHERE app = ? AND name = ?", (app, name))
        conn.execute("DELETE FROM beat_marks WHERE app = ? AND name = ?", (app, name))
        conn.execute("DELETE FROM beat_skips WHERE app = ? AND name = ?", (app, name))
    return gone > 0


def _paused(conn: sqlite3.Connection, app: str) -> set[str]:
    rows = conn.execute("SELECT name FROM beat_entries WHERE app = ? AND paused = 1", (app,))
    return {name for (name,) in rows}


def _set_paused(conn: sqlite3.Connection, app: str, name: str, paused: bool) -> None:
    # a static entry (defined in code) gets a row that only carries its paused flag
    with transaction(conn):
        conn.execute(
            "INSERT INTO beat_entries (app, name, blob, paused, dynamic) VALUES (?, ?, x'', ?, 0) "
            "ON CONFLICT (app, name) DO UPDATE SET paused = excluded.paused",
            (app, name, int(paused)),
        )


def _states(conn: sqlite3.Connection, app: str, names: list[str]) -> dict[str, StoredState]:
    out: dict[str, StoredState] = {}
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        marks = placeholders(len(chunk))
        rows = conn.execute(
            f"SELECT name, mark, state FROM beat_marks WHERE app = ? AND name IN ({marks})",  # noqa: S608
            (app, *chunk),
        )
        for name, mark, state in rows:
            out[name] = StoredState(int(mark), bytes(state) if state is not None else None)
    return out


def _skip_counts(conn: sqlite3.Connection, app: str, names: list[str]) -> dict[str, dict[str, int]]:
    wanted = set(names)
    out: dict[str, dict[str, int]] = {}
    for name, reason, n in conn.execute(
        "SELECT name, reason, n FROM beat_skips WHERE app = ?", (app,)
    ):
        if name in wanted:
            out.setdefault(name, {})[reason] = int(n)
    return out


def _claim(conn: sqlite3.Connection, app: str, claims: list[Claim]) -> list[bool]:
    won: list[bool] = []
    with transaction(conn):  # one write transaction: atomic against every other process
        for c in claims:
            row = conn.execute(
                "SELECT mark, state FROM beat_marks WHERE app = ? AND name = ?", (app, c.name)
            ).fetchone()
            if c.expect is not None:
                ok = row is not None and bytes(row[1] or b"") == c.expect
            elif c.init:
                ok = row is None
            else:  # still the watermark the beat planned from (None: still none)
                ok = (None if row is None else int(row[0])) == c.since_ms
            if ok:
                mark = row[0] if (c.expect is not None and row is not None) else c.through_ms
                conn.execute(
                    "INSERT INTO beat_marks (app, name, mark, state) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (app, name) DO UPDATE SET mark = excluded.mark, "
                    "state = excluded.state",
                    (app, c.name, mark, c.state),
                )
            won.append(ok)
    return won


def _settle(
    conn: sqlite3.Connection,
    app: str,
    confirms: list[tuple[str, int, bytes]],
    skips: list[tuple[str, str, int]],
) -> None:
    with transaction(conn):
        conn.executemany(
            "UPDATE beat_marks SET state = ? WHERE app = ? AND name = ? AND mark = ?",
            [(state, app, name, through) for name, through, state in confirms],
        )
        conn.executemany(
            "INSERT INTO beat_skips (app, name, reason, n) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (app, name, reason) DO UPDATE SET n = n + excluded.n",
            [(app, name, reason, n) for name, reason, n in skips],
        )
