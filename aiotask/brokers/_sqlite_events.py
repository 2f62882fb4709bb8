"""The monitoring event stream of brokers/sqlite.py: a capped table, read by row id.

Ids only grow (INTEGER PRIMARY KEY: max + 1, and the newest row is never deleted), so the
oldest rows are the lowest ids and a follower resumes after the last id it read. These
functions run on the connection's thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiotask._sqlite import transaction
from aiotask.brokers._common import start_after

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)


def emit(conn: sqlite3.Connection, rows: list[tuple[bytes]], cap: int) -> None:
    """Insert the batch and trim the table to the newest `cap`: one transaction."""
    with transaction(conn):
        conn.executemany("INSERT INTO aiotask_events (body) VALUES (?)", rows)
        conn.execute(
            "DELETE FROM aiotask_events WHERE id <= (SELECT max(id) FROM aiotask_events) - ?",
            (cap,),
        )


def start(conn: sqlite3.Connection, cursor: str | None) -> int:
    """The id to read after (see EventLog): the current end, the cursor, or 0 (all kept)."""
    oldest, newest = conn.execute(
        "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM aiotask_events"
    ).fetchone()
    return start_after(cursor, int(oldest), int(newest), log)


def after(conn: sqlite3.Connection, last: int, limit: int) -> list[tuple[int, bytes]]:
    rows: list[tuple[int, bytes]] = conn.execute(
        "SELECT id, CAST(body AS BLOB) FROM aiotask_events WHERE id > ? ORDER BY id LIMIT ?",
        (last, limit),
    ).fetchall()
    return rows
