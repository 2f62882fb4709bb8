"""Task history in the SQLite file: one table, indexed by last change, state and workflow."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiotask._sqlite import placeholders, transaction
from aiotask.backends._sqlite_store import SQLiteStore
from aiotask.history import Bucket, HistoryRecord, buckets_of, matches

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping, Sequence

    from aiotask._sqlite import Connection
    from aiotask.history import HistoryQuery

SCHEMA = """
CREATE TABLE IF NOT EXISTS task_history (
    app TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    worker TEXT NOT NULL, updated_at REAL NOT NULL, root_id TEXT, group_id TEXT,
    text TEXT NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (app, id));
CREATE INDEX IF NOT EXISTS task_history_updated ON task_history (app, updated_at);
CREATE INDEX IF NOT EXISTS task_history_state ON task_history (app, state, updated_at);
CREATE INDEX IF NOT EXISTS task_history_worker ON task_history (app, worker, updated_at);
CREATE INDEX IF NOT EXISTS task_history_root ON task_history (app, root_id);
CREATE INDEX IF NOT EXISTS task_history_group ON task_history (app, group_id);
CREATE TABLE IF NOT EXISTS task_history_cursor (app TEXT PRIMARY KEY, cursor TEXT NOT NULL)
"""


class SQLiteHistoryStore(SQLiteStore):
    """HistoryStore on the result backend's SQLite connection (its own thread)."""

    SCHEMA = SCHEMA

    def __init__(self, db: Connection, app_name: str) -> None:
        super().__init__(db)
        self._app = app_name

    async def put(self, records: Sequence[HistoryRecord]) -> None:
        if records:
            await (await self._conn()).run(_put, self._app, list(records))

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, HistoryRecord]:
        if not task_ids:
            return {}
        return await (await self._conn()).run(_get_many, self._app, list(task_ids))

    async def search(self, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        return await (await self._conn()).run(_search, self._app, query)

    async def family(self, root_id: str, limit: int) -> list[HistoryRecord]:
        return await (await self._conn()).run(_family, self._app, root_id, limit)

    async def counts(self) -> dict[str, int]:
        return await (await self._conn()).run(_counts, self._app)

    async def finished(self, since: float, width: float) -> list[Bucket]:
        rows = await (await self._conn()).run(_finished, self._app, since, width)
        return buckets_of(rows, since, width, time.time())

    async def prune(self, retention: Mapping[str, float], now: float, batch: int) -> int:
        return await (await self._conn()).run(_prune, self._app, dict(retention), now, batch)

    async def delete(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        return await (await self._conn()).run(_delete, self._app, list(task_ids))

    async def clear(self) -> None:
        await (await self._conn()).run(_clear, self._app)

    async def get_cursor(self) -> str | None:
        return await (await self._conn()).run(_get_cursor, self._app)

    async def put_cursor(self, cursor: str) -> None:
        await (await self._conn()).run(_put_cursor, self._app, cursor)


def _put(conn: sqlite3.Connection, app: str, records: list[HistoryRecord]) -> None:
    rows = [
        (
            app,
            r.id,
            r.name,
            r.state,
            r.worker,
            r.updated_at,
            r.root_id,
            r.group_id,
            r.text(),
            r.to_json(),
        )
        for r in records
    ]
    with transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO task_history VALUES (?,?,?,?,?,?,?,?,?,?)", rows)


def _texts(r: HistoryRecord) -> tuple[str, bytes]:
    return r.text(), r.to_json()


def _get_many(conn: sqlite3.Connection, app: str, ids: list[str]) -> dict[str, HistoryRecord]:
    out: dict[str, HistoryRecord] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = conn.execute(
            f"SELECT blob FROM task_history WHERE app = ? AND id IN ({placeholders(len(chunk))})",  # noqa: S608
            (app, *chunk),
        )
        for (blob,) in rows:
            record = HistoryRecord.from_json(bytes(blob))
            out[record.id] = record
    return out


def _where(app: str, query: HistoryQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = ["app = ?"]
    params: list[Any] = [app]
    for column, value in (("state", query.state), ("name", query.name), ("worker", query.worker)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("updated_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("updated_at <= ?")
        params.append(query.until)
    needle = query.q.strip()
    if needle:
        clauses.append("(substr(id, 1, ?) = ? OR instr(lower(name), ?) > 0 OR instr(text, ?) > 0)")
        params += [len(needle), needle, needle.lower(), needle.lower()]
    return " AND ".join(clauses), params


def _search(
    conn: sqlite3.Connection, app: str, query: HistoryQuery
) -> tuple[list[HistoryRecord], int]:
    needle = query.q.strip()
    if needle:  # a whole id (the usual search): one primary-key read
        exact = _get_many(conn, app, [needle]).get(needle)
        if exact is not None and matches(exact, query):
            return ([exact] if query.offset == 0 and query.limit else []), 1
    where, params = _where(app, query)
    (total,) = conn.execute(f"SELECT count(*) FROM task_history WHERE {where}", params).fetchone()  # noqa: S608
    rows = conn.execute(
        f"SELECT blob FROM task_history WHERE {where} "  # noqa: S608
        "ORDER BY updated_at DESC LIMIT ? OFFSET ?",
        (*params, query.limit, query.offset),
    )
    return [HistoryRecord.from_json(bytes(b)) for (b,) in rows], int(total)


def _family(conn: sqlite3.Connection, app: str, root_id: str, limit: int) -> list[HistoryRecord]:
    rows = conn.execute(
        "SELECT blob FROM task_history WHERE app = ? AND id = ? UNION "
        "SELECT blob FROM task_history WHERE app = ? AND root_id = ? UNION "
        "SELECT blob FROM task_history WHERE app = ? AND group_id = ? LIMIT ?",
        (app, root_id, app, root_id, app, root_id, limit),
    )
    found = [HistoryRecord.from_json(bytes(b)) for (b,) in rows]
    return sorted(found, key=lambda r: r.seen_at)


def _counts(conn: sqlite3.Connection, app: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT state, count(*) FROM task_history WHERE app = ? GROUP BY state", (app,)
    )
    return {state: int(n) for state, n in rows}


def _finished(
    conn: sqlite3.Connection, app: str, since: float, width: float
) -> list[tuple[int, str, int]]:
    """(bucket, state, count): counted in SQL, so 100,000 rows never cross into Python."""
    rows = conn.execute(
        "SELECT CAST((updated_at - ?) / ? AS INTEGER), state, count(*) FROM task_history "
        "WHERE app = ? AND state IN ('SUCCESS', 'FAILURE') AND updated_at >= ? "
        "GROUP BY 1, 2",
        (since, width, app, since),
    )
    return [(int(b), state, int(n)) for b, state, n in rows]


def _prune(
    conn: sqlite3.Connection, app: str, retention: dict[str, float], now: float, batch: int
) -> int:
    gone = 0
    with transaction(conn):
        for state, keep in retention.items():
            gone += conn.execute(
                "DELETE FROM task_history WHERE rowid IN (SELECT rowid FROM task_history "
                "WHERE app = ? AND state = ? AND updated_at < ? LIMIT ?)",
                (app, state, now - keep, batch),
            ).rowcount
    return gone


def _clear(conn: sqlite3.Connection, app: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM task_history WHERE app = ?", (app,))
        conn.execute("DELETE FROM task_history_cursor WHERE app = ?", (app,))


def _delete(conn: sqlite3.Connection, app: str, task_ids: list[str]) -> int:
    gone = 0
    with transaction(conn):
        for low in range(0, len(task_ids), 500):
            chunk = task_ids[low : low + 500]
            cur = conn.execute(
                f"DELETE FROM task_history WHERE app = ? AND id IN ({placeholders(len(chunk))})",  # noqa: S608
                (app, *chunk),
            )
            gone += cur.rowcount
    return gone


def _get_cursor(conn: sqlite3.Connection, app: str) -> str | None:
    row = conn.execute("SELECT cursor FROM task_history_cursor WHERE app = ?", (app,)).fetchone()
    return None if row is None else str(row[0])


def _put_cursor(conn: sqlite3.Connection, app: str, cursor: str) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO task_history_cursor VALUES (?, ?) "
            "ON CONFLICT (app) DO UPDATE SET cursor = excluded.cursor",
            (app, cursor),
        )
