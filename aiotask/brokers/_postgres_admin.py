"""Administration queries of brokers/postgres.py: counts, queue names, dead letters by id.

Kept apart from the delivery path. Reads take no row locks, so counting never blocks a claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._postgres import ident

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import asyncpg

#: (queue, ready, delayed, in flight, dead) per queue.
Counts = tuple[str, int, int, int, int]


async def count(status: Awaitable[str]) -> int:
    """The row count of a command tag ('DELETE 3')."""
    tail = (await status).rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def queue_counts(
    conn: asyncpg.Connection, schema: str, queues: list[str], wall: float
) -> list[Counts]:
    """Ready (due, not leased or lease lapsed), delayed, leased and dead, per queue."""
    s = ident(schema)
    rows = await conn.fetch(
        "SELECT q, "
        "count(m.id) FILTER (WHERE m.eta <= $2 AND (m.lease_until IS NULL "
        "OR m.lease_until <= $2)), "
        "count(m.id) FILTER (WHERE m.eta > $2 AND m.lease_until IS NULL), "
        "count(m.id) FILTER (WHERE m.lease_until > $2), "
        f"(SELECT count(*) FROM {s}.dead_letters d WHERE d.queue = q) "
        f"FROM unnest($1::text[]) AS q LEFT JOIN {s}.messages m ON m.queue = q GROUP BY q",
        queues,
        wall,
    )
    found = {r[0]: (r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
    return [found[queue] for queue in queues]


async def queue_names(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Every queue with a message or a dead letter."""
    s = ident(schema)
    rows = await conn.fetch(
        f"SELECT DISTINCT queue FROM {s}.messages "
        f"UNION SELECT DISTINCT queue FROM {s}.dead_letters ORDER BY 1"
    )
    return [str(r[0]) for r in rows]


async def dead_rows(
    conn: asyncpg.Connection, schema: str, queue: str, limit: int
) -> list[tuple[str, bytes, str, float, int]]:
    """Oldest first: (message id, body, reason, died at, row id)."""
    rows = await conn.fetch(
        "SELECT message_id, body, reason, died_at, id "
        f"FROM {ident(schema)}.dead_letters WHERE queue = $1 ORDER BY id LIMIT $2",
        queue,
        limit,
    )
    return [(r[0], bytes(r[1]), r[2], float(r[3]), int(r[4])) for r in rows]


async def delete_dead(conn: asyncpg.Connection, schema: str, queue: str, rows: list[int]) -> int:
    """Delete these dead-letter rows of `queue`; returns how many were still there."""
    return await count(
        conn.execute(
            f"DELETE FROM {ident(schema)}.dead_letters WHERE queue = $1 AND id = ANY($2::bigint[])",
            queue,
            rows,
        )
    )
