"""SQL of brokers/postgres.py, one function per transaction (each takes a pooled connection).

Times are unix seconds from the client's clock, as on the other brokers (an eta is the
producer's clock too). A leased row has `lease_until = eta = end of lease`, so a lapsed lease
is a ready row for the claim query, and the earliest `eta` of a queue is when its next message
becomes claimable, delayed or reclaimed alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from aiotask._postgres import NO_SYNC, fair
from aiotask.brokers._common import DEAD_LETTER_CAP

if TYPE_CHECKING:
    import asyncpg


class Token(NamedTuple):
    """What a Delivery's token holds: the row and the claim that owns it."""

    row: int
    owner: str


#: (row id, message id, queue, priority, deliveries, body) of a claimed row.
Row = tuple[int, str, str, int, int, bytes]


class Rows(NamedTuple):
    """A publish: the row keys' head (row i's key is the head and i as 8 hex digits), each
    row's message id and body, then queue, priority, eta and fair key: one value for every
    row (a uniform batch), or a list with one per row."""

    head: str
    ids: list[str]
    bodies: list[bytes]
    queue: str | list[str]
    priority: int | list[int]
    eta: float | list[float]
    fair_key: str | list[str]


class Ahead(NamedTuple):
    """When to look again: the earliest due time (None: nothing due), and whether a ready
    row was skipped because a transaction elsewhere holds its lock (then: poll)."""

    due: float | None
    skipped: bool


class Claimed(NamedTuple):
    rows: list[Row]
    #: (message id, queue, deliveries) of rows dead-lettered for too many deliveries
    buried: list[tuple[str, str, int]]
    #: consumers whose heartbeat expired, and how many leased rows they lost
    lost: list[tuple[str, int]]


class SQL:
    """The statements for one schema (formatted once)."""

    def __init__(self, s: str) -> None:
        # One statement (one round trip): insert, then NOTIFY each queue that got a row.
        # A first attempt's row keys are new, so it needs no ON CONFLICT (whose speculative
        # insertion costs about a third of the statement's server time); a retry, whose first
        # attempt may have committed before its reply was lost, skips the rows already there.
        # Row keys are made here from the batch's head ($1) and each row's index, so the
        # client sends no key per row; the same head on a retry gives the same keys. A batch
        # whose rows share queue, priority, eta and fair key (a send, most batches) passes
        # those once ("uniform"): two arrays to encode instead of six, one NOTIFY.
        cols = "(pkey, message_id, queue, priority, eta, body, fair_key)"
        key = "($1::text || lpad(to_hex(n - 1), 8, '0'))::uuid"
        uniform = (
            f"WITH ins AS (INSERT INTO {s}.messages {cols} "
            f"SELECT {key}, m, $4::text, $5::smallint, $6::float8, b, $7::text "
            "FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS t(m, b, n){} RETURNING 1) "
            "SELECT count(pg_notify($8::text, $4::text)) FROM (SELECT 1 FROM ins LIMIT 1) AS d "
            "WHERE $8::text <> ''"
        )
        mixed = (
            f"WITH ins AS (INSERT INTO {s}.messages {cols} "
            f"SELECT {key}, m, q, p, e, b, f FROM unnest($2::text[], $3::bytea[], $4::text[], "
            "$5::smallint[], $6::float8[], $7::text[]) WITH ORDINALITY AS t(m, b, q, p, e, f, n)"
            "{} RETURNING queue) "
            "SELECT count(pg_notify($8::text, q)) FROM (SELECT DISTINCT queue AS q FROM ins) "
            "AS d WHERE $8::text <> ''"
        )
        again = " ON CONFLICT (pkey) DO NOTHING"
        #: (uniform, again) -> statement
        self.insert = {
            (True, False): uniform.format(""),
            (True, True): uniform.format(again),
            (False, False): mixed.format(""),
            (False, True): mixed.format(again),
        }
        self.take_over = f"DELETE FROM {s}.consumers WHERE expires_at <= $1 RETURNING owner"
        # Not a nack: the work may have run, so the delivery stays counted.
        self.lapse = (
            f"UPDATE {s}.messages SET lease_until = $1, eta = $1, lease_owner = NULL "
            "WHERE lease_until IS NOT NULL AND starts_with(lease_owner, $2)"
        )
        # The reason's wording is exhausted_reason() in brokers/_common.py, word for word.
        self.bury_exhausted = (
            f"WITH gone AS (DELETE FROM {s}.messages WHERE id IN ("
            f"SELECT id FROM {s}.messages WHERE lease_until IS NOT NULL AND lease_until <= $1 "
            "AND deliveries >= $2 AND queue = ANY($3::text[]) FOR UPDATE SKIP LOCKED) "
            "RETURNING message_id, queue, priority, deliveries, body) "
            f"INSERT INTO {s}.dead_letters "
            "(message_id, queue, priority, deliveries, body, reason, died_at) "
            "SELECT message_id, queue, priority, deliveries, body, "
            "format('delivered %s times without being settled (max_deliveries=%s)', "
            "deliveries, $2), $1 FROM gone RETURNING message_id, queue, deliveries"
        )
        # The claims run in functions of the schema (broker step 4, aiotask/_postgres/claims.py):
        # planned once per connection, with planner settings that keep the index plan whatever
        # the statistics. claim: up to $3 ready rows of the queues $1 by priority then age,
        # and the look-ahead; claim_fair: round-robin across fairness keys (fair.py).
        args = "$1, $2, $3, $4, $5, $6"
        self.claim = f"SELECT * FROM {s}.claim({args})"
        self.claim_fair = f"SELECT * FROM {s}.claim_fair({args}, $7)"
        # When to look next: the earliest eta of these queues (delayed, leased) or the
        # earliest heartbeat expiry (a lost consumer to take over).
        # Also whether a ready row exists that the claim skipped (locked by a transaction
        # elsewhere): then look again soon, as no NOTIFY comes when that lock is released.
        self.next_due = (
            f"SELECT least((SELECT min(eta) FROM {s}.messages WHERE queue = ANY($1::text[]) "
            f"AND eta > $2), (SELECT min(expires_at) FROM {s}.consumers)), "
            f"EXISTS (SELECT 1 FROM {s}.messages WHERE queue = ANY($1::text[]) AND eta <= $2)"
        )
        _held = "unnest($1::bigint[], $2::text[]) AS t(id, owner)"
        # `m.id = ANY($1)` bounds the scan of messages to the held rows whatever the planner
        # estimates: on statistics of an empty table it hashed the whole primary key for the
        # join to `t` (~20 ms per settle of 200 on a backlog of 100,000, until the next analyze).
        _match = "m.id = ANY($1::bigint[]) AND m.id = t.id AND m.lease_owner = t.owner"
        self.ack = f"DELETE FROM {s}.messages m USING {_held}, {NO_SYNC} WHERE {_match}"
        self.nack_counted = (
            f"UPDATE {s}.messages m SET lease_until = $3, eta = $3, lease_owner = NULL "
            f"FROM {_held}, {NO_SYNC} WHERE {_match}"
        )
        # A hand-back is not a failed delivery: undo the claim's increment.
        self.nack_uncounted = (
            f"UPDATE {s}.messages m SET lease_until = NULL, lease_owner = NULL, eta = $3, "
            "deliveries = greatest(m.deliveries - 1, 0) "
            f"FROM {_held}, {NO_SYNC} WHERE {_match}"
        )
        self.extend = (
            f"UPDATE {s}.messages m SET lease_until = $3, eta = $3 "
            f"FROM {_held}, {NO_SYNC} WHERE {_match}"
        )
        self.bury = (
            f"WITH gone AS (DELETE FROM {s}.messages m USING {_held} "
            f"WHERE {_match} "
            "RETURNING m.message_id, m.queue, m.priority, m.deliveries, m.body) "
            f"INSERT INTO {s}.dead_letters "
            "(message_id, queue, priority, deliveries, body, reason, died_at) "
            "SELECT message_id, queue, priority, deliveries, body, $3, $4 FROM gone "
            "RETURNING queue"
        )
        self.trim_dead = (
            f"DELETE FROM {s}.dead_letters WHERE queue = $1 AND id <= (SELECT id FROM "
            f"{s}.dead_letters WHERE queue = $1 ORDER BY id DESC LIMIT 1 OFFSET {DEAD_LETTER_CAP})"
        )
        # Not waiting for the WAL flush: a heartbeat lost in a server crash leaves the
        # previous one, which lasts worker_lost_after, many heartbeat intervals.
        self.beat = (
            f"INSERT INTO {s}.consumers (owner, expires_at) SELECT $1, $2 FROM {NO_SYNC} "
            "ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at"
        )
        self.unbeat = f"DELETE FROM {s}.consumers WHERE owner = $1"
        self.requeue_owner = (
            f"UPDATE {s}.messages SET lease_until = NULL, lease_owner = NULL, eta = $1, "
            "deliveries = greatest(deliveries - 1, 0) "
            "WHERE lease_until IS NOT NULL AND lease_owner = $2 RETURNING queue"
        )
        self.purge = (
            f"DELETE FROM {s}.messages WHERE queue = $1 "
            "AND (lease_until IS NULL OR lease_until <= $2)"
        )


async def insert(
    conn: asyncpg.Connection,
    sql: SQL,
    rows: Rows,
    channel: str,
    *,
    again: bool,
) -> None:
    """Insert a batch and wake the consumers (`channel` "" : no NOTIFY; it is delivered at
    commit). `again`: a retry, which skips the rows a lost attempt committed (same keys)."""
    statement = sql.insert[not isinstance(rows.queue, list), again]
    await conn.fetchval(statement, *rows, channel)


async def claim(
    conn: asyncpg.Connection,
    sql: SQL,
    queues: list[str],
    limit: int,
    owner: str,
    *,
    wall: float,
    lease: float,
    max_deliveries: int,
    keyed: set[str],
) -> tuple[list[Row], Ahead | None]:
    """Lease up to `limit` ready rows, in the order they are to run: by priority then age,
    or round-robin across fairness keys while the queues have keyed rows. `keyed` holds the
    queue sets this consumer last found keyed rows in (it claims those with claim_fair).
    Also the look-ahead, when a plain claim got fewer than `limit` rows (a fair claim has
    none: the consumer asks next_due)."""
    args = (queues, wall, limit, wall + lease, owner, max_deliveries)
    name = fair.cursor_name(queues)
    if name not in keyed:
        got: list[Row] = []
        ahead = None
        marked = False  # the look-ahead row says the queues have a keyed row
        for r in await conn.fetch(sql.claim, *args):
            if r[0] is not None:
                got.append((r[0], r[1], r[2], r[3], r[4], r[5]))
            elif r[8]:
                marked = True
            else:
                ahead = Ahead(r[6], r[7])
        if not marked:
            got.sort(key=lambda r: (-r[3], r[0]))  # RETURNING has no order
            return got, ahead
        keyed.add(name)  # a keyed row: claim fairly from now on
    rows = await conn.fetch(sql.claim_fair, *args, fair.slot_names(name))
    if rows and rows[0][6] == 0:
        keyed.discard(name)  # no keyed row any more: the plain claim ran (turn 0)
    rows.sort(key=lambda r: (r[6], -r[3], r[0]))
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows], None


async def maintain(
    conn: asyncpg.Connection, sql: SQL, queues: list[str], *, wall: float, max_deliveries: int
) -> Claimed:
    """Take over the leases of lost consumers and dead-letter exhausted rows (one transaction,
    run by each consumer every MAINTAIN_EVERY seconds and whenever it found nothing)."""
    async with conn.transaction():
        lost: list[tuple[str, int]] = []
        for (consumer,) in await conn.fetch(sql.take_over, wall):
            status = await conn.execute(sql.lapse, wall, consumer + ":")
            lost.append((consumer, _count(status)))
        buried = await conn.fetch(sql.bury_exhausted, wall, max_deliveries, queues)
        for queue in {b[1] for b in buried}:
            await conn.execute(sql.trim_dead, queue)
    return Claimed([], [(b[0], b[1], b[2]) for b in buried], lost)


async def settle(
    conn: asyncpg.Connection, statement: str, held: list[Token], *extra: object
) -> int:
    """Run an ack/nack/extend statement over (row, owner) pairs; returns rows touched."""
    status = await conn.execute(statement, [t.row for t in held], [t.owner for t in held], *extra)
    return _count(status)


async def bury(
    conn: asyncpg.Connection, sql: SQL, held: list[Token], reason: str, wall: float
) -> None:
    async with conn.transaction():
        gone = await conn.fetch(
            sql.bury, [t.row for t in held], [t.owner for t in held], reason, wall
        )
        for queue in {g[0] for g in gone}:
            await conn.execute(sql.trim_dead, queue)


async def release_all(conn: asyncpg.Connection, sql: SQL, consumer: str, wall: float) -> int:
    """Lapse every lease of `consumer` (close, cold shutdown) and forget its heartbeat."""
    async with conn.transaction():
        released = _count(await conn.execute(sql.lapse, wall, consumer + ":"))
        await conn.execute(sql.unbeat, consumer)
    return released


def _count(status: str) -> int:
    """The row count of a command tag ('UPDATE 3', 'DELETE 0', 'INSERT 0 5')."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
