"""SQL of backends/postgres.py: results, groups, revocations, control rows, worker registry.

Each function takes a pooled connection and is one transaction (or one statement), so a call
retried after a lost connection either committed before or does it now.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from aiotask.backends.base import GroupProgress, MemberReport, decode_record, group_step
from aiotask.states import FAILURE, SUCCESS

if TYPE_CHECKING:
    import asyncpg

#: Rows deleted per table per cleanup, so one store never stalls on a huge backlog.
CLEANUP_BATCH = 5000
#: Results up to this size ride in their NOTIFY (base64, under the 8,000-byte payload limit).
NOTIFY_DATA_MAX = 5000
#: Control payloads are kept this long (seconds), for listeners between two polls.
CONTROL_KEEP = 60.0


async def upsert(
    conn: asyncpg.Connection,
    s: str,
    rows: tuple[list[str], list[str], list[bool], list[bytes], list[float]],
    wall: float,
    channel: str,
) -> None:
    """First final writer wins: the update applies only while the stored row is not ready
    (or expired), in the same statement as the check. One statement, one round trip: the
    NOTIFY of each stored ready result (`channel` "": none) is delivered at commit, so a
    waiter woken by it finds the row. Its payload carries the result itself when small
    (`<base64 data> <task id>`, or `' ' <task id>` without it): a waiter then needs no read.

    The commit waits for the WAL flush, a worker's too: its ack follows, and after a server
    crash the ack may run on the restarted server, where a result that skipped the flush is
    gone (docs/postgres.md, "Reliability")."""
    await conn.fetchval(
        f"WITH up AS (INSERT INTO {s}.results (task_id, state, ready, data, expires_at) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::bytea[], $5::float8[]) "
        "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, "
        "ready = excluded.ready, data = excluded.data, expires_at = excluded.expires_at "
        f"WHERE NOT {s}.results.ready OR {s}.results.expires_at <= $6 "
        "RETURNING task_id, ready, data) "
        "SELECT count(pg_notify($7, CASE WHEN octet_length(up.data) <= $8 "
        "AND octet_length(up.task_id) <= 512 "
        "THEN encode(up.data, 'base64') || ' ' || up.task_id ELSE ' ' || up.task_id END)) "
        "FROM up WHERE ready AND $7 <> ''",
        *rows,
        wall,
        channel,
        NOTIFY_DATA_MAX,
    )


def parse_notice(payload: str) -> tuple[str, str]:
    """(task id, the result's data in base64, "" if the notification does not carry it) of a
    results NOTIFY. Every listener of the app gets every result's notification: decode the
    data (`notice_data`) only for a task somebody here waits for."""
    data, _, task_id = payload.partition(" ")  # base64 has no space; a task id may
    return task_id, data


def notice_data(data: str) -> bytes:
    return base64.b64decode(data)


async def fetch(
    conn: asyncpg.Connection, s: str, task_ids: list[str], wall: float, ready_only: bool
) -> list[tuple[str, bytes]]:
    rows = await conn.fetch(
        f"SELECT task_id, data FROM {s}.results WHERE task_id = ANY($1::text[]) "
        "AND expires_at > $2 AND (ready OR NOT $3)",
        task_ids,
        wall,
        ready_only,
    )
    return [(r[0], bytes(r[1])) for r in rows]


async def cleanup(conn: asyncpg.Connection, s: str, wall: float) -> int:
    """Delete up to CLEANUP_BATCH expired rows per table (reads already ignore them)."""
    removed = 0
    async with conn.transaction():
        for table, key in (("results", "task_id"), ("revoked", "task_id")):
            status = await conn.execute(
                f"DELETE FROM {s}.{table} WHERE {key} IN (SELECT {key} FROM {s}.{table} "
                "WHERE expires_at <= $1 LIMIT $2)",
                wall,
                CLEANUP_BATCH,
            )
            removed += count(status)
        gone = await conn.fetch(
            f"DELETE FROM {s}.groups WHERE group_id IN (SELECT group_id FROM {s}.groups "
            "WHERE expires_at <= $1 LIMIT $2) RETURNING group_id",
            wall,
            CLEANUP_BATCH,
        )
        if gone:
            await conn.execute(
                f"DELETE FROM {s}.group_members WHERE group_id = ANY($1::text[])",
                [g[0] for g in gone],
            )
        removed += len(gone)
        await conn.execute(f"DELETE FROM {s}.replies WHERE expires_at <= $1", wall)
        await conn.execute(f"DELETE FROM {s}.workers WHERE expires_at <= $1", wall)
    return removed


async def add_to_groups(
    conn: asyncpg.Connection, s: str, reports: list[MemberReport], wall: float
) -> list[GroupProgress]:
    """Record the reports (waiting for the WAL flush, as a result store does; see upsert)."""
    async with conn.transaction():
        # Lock the groups in one order first: two batches never wait on each other in a cycle.
        await conn.execute(
            f"SELECT 1 FROM {s}.groups WHERE group_id = ANY($1::text[]) "
            "ORDER BY group_id FOR UPDATE",
            sorted({r.group_id for r in reports}),
        )
        return [await _report(conn, s, r, wall) for r in reports]


async def _report(
    conn: asyncpg.Connection, s: str, report: MemberReport, wall: float
) -> GroupProgress:
    group_id, result = report.group_id, report.result
    # FOR UPDATE: reports of one group run one after another, so exactly one sees `fire`.
    group = await conn.fetchrow(
        f"SELECT size, body, fired, failed FROM {s}.groups "
        "WHERE group_id = $1 AND expires_at > $2 FOR UPDATE",
        group_id,
        wall,
    )
    if group is None:
        return GroupProgress(size=0, done=0)
    size, body, fired, failed = group["size"], group["body"], group["fired"], group["failed"]
    new = count(
        await conn.execute(
            f"INSERT INTO {s}.group_members (group_id, idx, state, data) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (group_id, idx) DO NOTHING",
            group_id,
            report.index,
            result.state,
            result.data,
        )
    )
    counts = await conn.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE state = $1), "
        f"max(CASE WHEN idx = $2 THEN state END) FROM {s}.group_members WHERE group_id = $3",
        str(SUCCESS),
        report.index,
        group_id,
    )
    done, succeeded, recorded = counts if counts is not None else (0, 0, None)
    step, now_fired, now_failed = group_step(
        size=size,
        done=done,
        succeeded=succeeded,
        fired=fired,
        failed=failed,
        new=new == 1,
        member_failed=recorded == FAILURE,
    )
    if (now_fired, now_failed) != (fired, failed):
        await conn.execute(
            f"UPDATE {s}.groups SET fired = $1, failed = $2 WHERE group_id = $3",
            now_fired,
            now_failed,
            group_id,
        )
    body = bytes(body) if body is not None else None
    if step in ("fire", "fire_again"):
        data = await conn.fetch(
            f"SELECT data FROM {s}.group_members WHERE group_id = $1 ORDER BY idx", group_id
        )
        records = [decode_record(bytes(d[0])) for d in data]
        again = step == "fire_again"
        return GroupProgress(
            size, done, fire=not again, fire_again=again, body=body, records=records
        )
    if step in ("first_failure", "failure_again"):
        first = step == "first_failure"
        return GroupProgress(size, done, first_failure=first, failure_again=not first, body=body)
    return GroupProgress(size, done)


async def broadcast(
    conn: asyncpg.Connection, s: str, payload: bytes, wall: float, channel: str | None
) -> None:
    async with conn.transaction():
        await conn.execute(f"DELETE FROM {s}.control WHERE sent_at < $1", wall - CONTROL_KEEP)
        await conn.execute(
            f"INSERT INTO {s}.control (payload, sent_at) VALUES ($1, $2)", payload, wall
        )
        if channel is not None:
            await conn.execute("SELECT pg_notify($1, '')", channel)


async def control_after(conn: asyncpg.Connection, s: str, after: int) -> list[tuple[int, bytes]]:
    rows = await conn.fetch(f"SELECT id, payload FROM {s}.control WHERE id > $1 ORDER BY id", after)
    return [(int(r[0]), bytes(r[1])) for r in rows]


async def reply(
    conn: asyncpg.Connection,
    s: str,
    reply_to: str,
    payload: bytes,
    expires: float,
    channel: str | None,
) -> None:
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO {s}.replies (reply_to, payload, expires_at) VALUES ($1, $2, $3)",
            reply_to,
            payload,
            expires,
        )
        if channel is not None:
            await conn.execute("SELECT pg_notify($1, $2)", channel, reply_to)


async def take_replies(conn: asyncpg.Connection, s: str, reply_to: str) -> list[bytes]:
    rows = await conn.fetch(
        f"DELETE FROM {s}.replies WHERE reply_to = $1 RETURNING id, payload", reply_to
    )
    return [bytes(r[1]) for r in sorted(rows, key=lambda r: int(r[0]))]


def count(status: str) -> int:
    """The row count of a command tag ('UPDATE 3', 'INSERT 0 1')."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
