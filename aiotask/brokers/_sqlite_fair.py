"""Fairness across keys on SQLite: a `fair_key` column and a round-robin claim.

A queue whose ready rows all have the empty key (no fairness in use) is claimed exactly as
before, by priority then age; the only added cost is one probe of a partial index that holds
keyed rows alone. When keyed rows exist, the claim visits keys from a rotating cursor (the
last key served, kept per queue set in a table and moved inside the claim's write lock, so
consecutive claims of one row each still alternate between keys), found by a skip-scan of the
partial index, and takes each key's share by an index range.

Every probe is an index range, never a scan of the queue: a key's head repeats the partial
index's `fair_key != ''` (a bound `fair_key = ?` alone does not let the planner use a partial
index, and the claim index would walk every row queued ahead of the key's first), and the
unkeyed rows ("") have a partial index of their own, made by the first keyed claim on a file,
so a file that never uses fairness does not maintain a second copy of the claim index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._sqlite import begin, placeholders

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

#: (row id, message id, queue, priority, deliveries, body), as sqlite.py's claim returns
Row = tuple[int, bytes, str, int, int, bytes]

#: Run once per file by the broker (an older file gains the column; a newer one has it).
SCHEMA = (
    "CREATE INDEX IF NOT EXISTS aiotask_messages_fair_key ON aiotask_messages "
    "(queue, fair_key, priority DESC, eta, id) WHERE fair_key != ''",
    "CREATE TABLE IF NOT EXISTS aiotask_fair_cursor "
    "(queues TEXT PRIMARY KEY, last_key TEXT NOT NULL) WITHOUT ROWID",
)
#: The unkeyed rows in claim order, for their turn: made by the first keyed claim (UNKEYED).
UNKEYED_INDEX = (
    "CREATE INDEX IF NOT EXISTS aiotask_messages_unkeyed ON aiotask_messages "
    "(queue, priority DESC, eta, id) WHERE fair_key = ''"
)
COLUMN = "ALTER TABLE aiotask_messages ADD COLUMN fair_key TEXT NOT NULL DEFAULT ''"


def ensure(conn: sqlite3.Connection) -> None:
    """Add the column, index and cursor table when missing (idempotent; under the write lock)."""
    begin(conn)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(aiotask_messages)")}
        if "fair_key" not in columns:
            conn.execute(COLUMN)
        for statement in SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def has_fair(conn: sqlite3.Connection, queues: Sequence[str]) -> bool:
    """True when any row of these queues has a key (the partial index answers it)."""
    qs = placeholders(len(queues))
    row = conn.execute(
        f"SELECT 1 FROM aiotask_messages WHERE fair_key != '' AND queue IN ({qs}) LIMIT 1",  # noqa: S608
        tuple(queues),
    ).fetchone()
    return row is not None


_KEYS_AFTER = (
    # A skip-scan over the partial index: one probe per distinct key, not one per row.
    "WITH RECURSIVE k(v) AS ("
    "SELECT (SELECT min(fair_key) FROM aiotask_messages WHERE queue=?1 AND fair_key > ?2 "
    "AND fair_key != '') "
    "UNION ALL SELECT (SELECT min(fair_key) FROM aiotask_messages WHERE queue=?1 "
    "AND fair_key > k.v AND fair_key != '') FROM k WHERE k.v IS NOT NULL"
    ") SELECT v FROM k WHERE v IS NOT NULL LIMIT ?3"
)
# The literal `fair_key != ''` / `fair_key = ''` terms make each head a range of its partial index.
_HEAD = (
    "SELECT id FROM aiotask_messages WHERE queue=?1 AND fair_key=?2 AND fair_key != '' "
    "AND eta <= ?3 ORDER BY priority DESC, eta, id LIMIT ?4"
)
_UNKEYED_HEAD = (
    "SELECT id FROM aiotask_messages WHERE queue=?1 AND fair_key = '' AND ?2 = '' "
    "AND eta <= ?3 ORDER BY priority DESC, eta, id LIMIT ?4"
)


def _turns(
    conn: sqlite3.Connection, queues: Sequence[str], cursor: str, limit: int
) -> list[tuple[str, str]]:
    """(key, queue) pairs in serving order from the cursor: keys after it, then from the start
    (the unkeyed "" first there); at most `limit` keys per queue on each side of the cursor."""
    pairs: list[tuple[str, str]] = []
    for queue in queues:
        after = [str(r[0]) for r in conn.execute(_KEYS_AFTER, (queue, cursor, limit))]
        wrap = [str(r[0]) for r in conn.execute(_KEYS_AFTER, (queue, "", limit))]
        keys = set(after) | {k for k in wrap if k <= cursor}
        keys.add("")  # the unkeyed messages take turns too
        pairs += [(key, queue) for key in keys]
    pairs.sort(key=lambda p: (p[0] <= cursor, p[0], p[1]))
    return pairs


def pick(conn: sqlite3.Connection, queues: Sequence[str], wall: float, limit: int) -> list[int]:
    """Row ids to claim, in round-robin order across keys; moves the cursor past the last.

    Keys are visited from the cursor; each non-empty one gives its share of `limit` rows by
    the claim's usual order (an index range per key); empty turns (a key with only delayed
    rows, no unkeyed rows) are skipped. A claim costs O(limit + keys probed), not O(rows)."""
    name = "\x1f".join(sorted(queues))
    cursor_row = conn.execute(
        "SELECT last_key FROM aiotask_fair_cursor WHERE queues=?", (name,)
    ).fetchone()
    cursor = "" if cursor_row is None else str(cursor_row[0])
    turns = _turns(conn, queues, cursor, limit)
    share = -(-limit // max(min(len(turns), limit), 1))
    heads: list[tuple[str, list[int]]] = []
    for key, queue in turns:
        head = _HEAD if key else _UNKEYED_HEAD
        rows = [int(r[0]) for r in conn.execute(head, (queue, key, wall, share))]
        if rows:
            heads.append((key, rows))
            if len(heads) >= limit:
                break
    picked: list[tuple[int, str]] = []
    for rank in range(share):
        for key, rows in heads:
            if rank < len(rows) and len(picked) < limit:
                picked.append((rows[rank], key))
    if picked:
        conn.execute(
            "INSERT INTO aiotask_fair_cursor (queues, last_key) VALUES (?, ?) "
            "ON CONFLICT (queues) DO UPDATE SET last_key=excluded.last_key",
            (name, picked[-1][1]),
        )
    return [row for row, _key in picked]


def claim(
    conn: sqlite3.Connection, queues: list[str], limit: int, owner: str, wall: float, lease: float
) -> list[Row]:
    """Claim in round-robin order across fairness keys; rows come back in that order."""
    # A few microseconds when the index exists (a prepared statement that finds it in the
    # schema), and robust to a file replaced under this connection.
    conn.execute(UNKEYED_INDEX)
    ids = pick(conn, queues, wall, limit)
    if not ids:
        return []
    rows: list[Row] = conn.execute(
        "UPDATE aiotask_messages SET lease_until=?1, eta=?1, lease_owner=?2, "  # noqa: S608
        f"deliveries=deliveries + 1 WHERE id IN ({placeholders(len(ids))}) "
        "RETURNING id, CAST(message_id AS BLOB), queue, priority, deliveries, "
        "CAST(body AS BLOB)",
        (wall + lease, owner, *ids),
    ).fetchall()
    order = {row_id: i for i, row_id in enumerate(ids)}
    rows.sort(key=lambda r: order[r[0]])
    return rows
