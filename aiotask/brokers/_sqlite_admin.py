"""Administration queries of brokers/sqlite.py: counts, queue names, dead letters by id.

Functions that run on the connection's thread, kept apart from the delivery path. Reads need
no write lock (WAL), so counting never blocks producers or workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._sqlite import placeholders, transaction
from aiotask._time import now

if TYPE_CHECKING:
    import sqlite3

#: Ids per DELETE statement (well under SQLite's bound-parameter limit).
_CHUNK = 500

#: (queue, ready, delayed, in flight, dead) per queue.
Counts = tuple[str, int, int, int, int]


def queue_counts(conn: sqlite3.Connection, queues: list[str]) -> list[Counts]:
    """Ready (eta due, not leased or lease lapsed), delayed, leased and dead, per queue.

    A row whose lease lapsed is ready (the next claim takes it), as `receive` would see it.
    """
    wall = now()
    out: list[Counts] = []
    for queue in queues:
        ready, delayed, leased = conn.execute(
            "SELECT "
            "coalesce(sum(eta <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)), 0), "
            "coalesce(sum(eta > ?1 AND lease_until IS NULL), 0), "
            "coalesce(sum(lease_until > ?1), 0) "
            "FROM aiotask_messages WHERE queue = ?2",
            (wall, queue),
        ).fetchone()
        (dead,) = conn.execute(
            "SELECT count(*) FROM aiotask_dead_letters WHERE queue = ?", (queue,)
        ).fetchone()
        out.append((queue, int(ready), int(delayed), int(leased), int(dead)))
    return out


def queue_names(conn: sqlite3.Connection) -> list[str]:
    """Every queue with a message or a dead letter in the file."""
    rows = conn.execute(
        "SELECT DISTINCT queue FROM aiotask_messages "
        "UNION SELECT DISTINCT queue FROM aiotask_dead_letters ORDER BY 1"
    ).fetchall()
    return [str(q) for (q,) in rows]


def dead_rows(
    conn: sqlite3.Connection, queue: str, limit: int
) -> list[tuple[bytes, bytes, str, float, int]]:
    """Oldest first: (message id, body, reason, died at, row id)."""
    rows: list[tuple[bytes, bytes, str, float, int]] = conn.execute(
        "SELECT CAST(message_id AS BLOB), CAST(body AS BLOB), reason, died_at, id "
        "FROM aiotask_dead_letters WHERE queue=? ORDER BY id LIMIT ?",
        (queue, limit),
    ).fetchall()
    return rows


def delete_dead(conn: sqlite3.Connection, queue: str, rows: list[int]) -> int:
    """Delete these dead-letter rows of `queue`; returns how many were still there."""
    deleted = 0
    with transaction(conn):
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            cur = conn.execute(
                "DELETE FROM aiotask_dead_letters WHERE queue=? "  # noqa: S608
                f"AND id IN ({placeholders(len(chunk))})",
                (queue, *chunk),
            )
            deleted += cur.rowcount
    return deleted
