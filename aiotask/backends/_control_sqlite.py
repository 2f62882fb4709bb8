"""SQLite tables for the worker registry and control replies (run on the connection's thread).

Both are scoped by key prefix, so apps sharing a file do not see each other's workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._sqlite import transaction

if TYPE_CHECKING:
    import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS aiotask_workers (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    record BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (scope, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aiotask_replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reply_to TEXT NOT NULL,
    payload BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS aiotask_replies_to ON aiotask_replies (reply_to);
"""


def register(
    conn: sqlite3.Connection, scope: str, name: str, record: bytes, expires: float
) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO aiotask_workers (scope, name, record, expires_at) VALUES (?,?,?,?) "
            "ON CONFLICT (scope, name) DO UPDATE SET record=excluded.record, "
            "expires_at=excluded.expires_at",
            (scope, name, record, expires),
        )


def unregister(conn: sqlite3.Connection, scope: str, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM aiotask_workers WHERE scope=? AND name=?", (scope, name))


def workers(conn: sqlite3.Connection, scope: str, wall: float) -> dict[str, bytes]:
    """Live records; expired ones are deleted here (the registry is small)."""
    with transaction(conn):
        conn.execute("DELETE FROM aiotask_workers WHERE scope=? AND expires_at <= ?", (scope, wall))
        rows = conn.execute(
            "SELECT name, CAST(record AS BLOB) FROM aiotask_workers WHERE scope=? ORDER BY name",
            (scope,),
        ).fetchall()
    return {str(name): bytes(record) for name, record in rows}


def reply(
    conn: sqlite3.Connection, reply_to: str, payload: bytes, expires: float, wall: float
) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM aiotask_replies WHERE expires_at <= ?", (wall,))
        conn.execute(
            "INSERT INTO aiotask_replies (reply_to, payload, expires_at) VALUES (?,?,?)",
            (reply_to, payload, expires),
        )


def take_replies(conn: sqlite3.Connection, reply_to: str) -> list[bytes]:
    with transaction(conn):
        rows = conn.execute(
            "DELETE FROM aiotask_replies WHERE reply_to=? RETURNING id, CAST(payload AS BLOB)",
            (reply_to,),
        ).fetchall()
    return [bytes(payload) for _, payload in sorted(rows)]
