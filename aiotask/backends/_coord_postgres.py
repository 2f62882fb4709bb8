"""The coordination store in the PostgreSQL schema: GCRA state and slot leases on the server's
clock, so workers with skewed clocks share one timeline.

- `take_rate` is one UPSERT: the conflicting row is locked, the GCRA step is computed from its
  newest TAT in the SET clause (the same maths as coordination/ratelimit.py), and RETURNING
  hands back the new TAT with the request's time and verdict (stored beside it: RETURNING
  cannot see the old row).
- `acquire_slot` is one transaction under a transaction-scoped advisory lock per key: delete
  the key's lapsed leases, then count the rest and insert. The delete locks each lapsed row, so
  a renewal racing with it either extended the row first (then it is counted) or finds it gone
  (then it reports False): never `limit` + 1 live leases.
- `renew_slots` and `release_slots` are one statement each for the whole batch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from aiotask._time import monotonic
from aiotask.backends._lock_postgres import NOW
from aiotask.coordination.ratelimit import RESERVE_AHEAD, Grant

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from aiotask._postgres import Database
    from aiotask.coordination.concurrency import Slot

#: Idle keys (a TAT this far in the past, lapsed leases) are deleted this often, in seconds.
PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000


class PostgresCoordinationStore:
    """CoordinationStore on the result backend's pool; keys are `<app>:<key>` in schema `s`."""

    def __init__(self, db: Database, s: str, schema: str, app_name: str) -> None:
        self._db = db
        self._s = s
        self._schema = schema
        self._ns = app_name
        self._pruned_at = monotonic()

    def _name(self, key: str) -> str:
        return f"{self._ns}:{key}"

    async def take_rate(
        self, key: str, interval: float, burst: int = 1, ahead: float = RESERVE_AHEAD
    ) -> Grant:
        await self._ready()
        tau = (max(burst, 1) - 1) * interval
        row = await self._db.run(
            lambda c: c.fetchrow(_take_rate_sql(self._s), self._name(key), interval, tau, ahead),
            "take a rate-limit slot",
        )
        assert row is not None  # noqa: S101 - an UPSERT's RETURNING always has the row
        tat, seen, granted = float(row[0]), float(row[1]), bool(row[2])
        if granted:
            return Grant(True, max(tat - interval - tau - seen, 0.0))
        return Grant(False, tat - tau - seen - ahead)

    async def acquire_slot(self, key: str, limit: int, token: str, lease: float) -> bool:
        await self._ready()
        name = self._name(key)
        return await self._db.run(
            lambda c: self._acquire(c, name, limit, token, lease), "take a concurrency slot"
        )

    async def _acquire(
        self, conn: asyncpg.Connection, name: str, limit: int, token: str, lease: float
    ) -> bool:
        s = self._s
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"aiotask:{self._schema}:{name}"
            )
            await conn.execute(
                f"DELETE FROM {s}.coord_slots WHERE name = $1 AND expires_at <= {NOW}", name
            )
            # a new statement, a new snapshot: it sees every lease committed before the lock
            took = await conn.fetchval(
                f"INSERT INTO {s}.coord_slots AS sl (name, token, expires_at) "
                f"SELECT $1, $2, {NOW} + $4 WHERE EXISTS (SELECT 1 FROM {s}.coord_slots "
                f"WHERE name = $1 AND token = $2) OR (SELECT count(*) FROM {s}.coord_slots "
                "WHERE name = $1) < $3 "
                "ON CONFLICT (name, token) DO UPDATE SET expires_at = excluded.expires_at "
                "RETURNING 1",
                name,
                token,
                limit,
                lease,
            )
        return took is not None

    async def renew_slots(self, slots: Sequence[Slot], lease: float) -> list[bool]:
        if not slots:
            return []
        await self._ready()
        pairs = sorted({(self._name(k), t) for k, t in slots})  # one lock order for all
        rows = await self._db.run(
            lambda c: c.fetch(
                f"UPDATE {self._s}.coord_slots AS sl SET expires_at = {NOW} + $3 "
                "FROM unnest($1::text[], $2::text[]) AS r(name, token) "
                f"WHERE sl.name = r.name AND sl.token = r.token AND sl.expires_at > {NOW} "
                "RETURNING sl.name, sl.token",
                [n for n, _ in pairs],
                [t for _, t in pairs],
                lease,
            ),
            "renew concurrency slots",
        )
        renewed = {(r[0], r[1]) for r in rows}
        return [(self._name(k), t) in renewed for k, t in slots]

    async def release_slots(self, slots: Sequence[Slot]) -> None:
        if not slots:
            return
        await self._ready()
        names, tokens = [self._name(k) for k, _ in slots], [t for _, t in slots]
        await self._db.run(
            lambda c: c.execute(
                f"DELETE FROM {self._s}.coord_slots AS sl USING unnest($1::text[], $2::text[]) "
                "AS r(name, token) WHERE sl.name = r.name AND sl.token = r.token",
                names,
                tokens,
            ),
            "release concurrency slots",
        )

    async def slots_in_use(self, key: str) -> int:
        await self._ready()
        got = await self._db.run(
            lambda c: c.fetchval(
                f"SELECT count(*) FROM {self._s}.coord_slots WHERE name = $1 "
                f"AND expires_at > {NOW}",
                self._name(key),
            ),
            "count concurrency slots",
        )
        return int(got)

    async def _ready(self) -> None:
        """The tables exist (a worker may coordinate before anything else connected the
        backend), and idle rows are pruned now and then."""
        await self._db.migrate("backend")
        if monotonic() - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = monotonic()
        s = self._s
        for sql in (
            # a TAT in the past carries no debt; a minute's margin covers clock rounding
            f"DELETE FROM {s}.coord_rate WHERE name IN (SELECT name FROM {s}.coord_rate "
            f"WHERE tat < {NOW} - 60 LIMIT {PRUNE_BATCH})",
            # lapsed leases of keys nobody asked for since (a renewal that extended one
            # first keeps it: the DELETE re-checks the newest row)
            f"DELETE FROM {s}.coord_slots WHERE (name, token) IN (SELECT name, token FROM "
            f"{s}.coord_slots WHERE expires_at <= {NOW} LIMIT {PRUNE_BATCH})",
        ):
            await self._db.run(functools.partial(_execute, sql=sql), "prune coordination state")


async def _execute(conn: asyncpg.Connection, sql: str) -> str:
    return await conn.execute(sql)


def _take_rate_sql(s: str) -> str:
    """$1 name, $2 interval, $3 tau ((burst - 1) * interval), $4 ahead -> (tat, seen, granted).

    A new key books its first start now. For a known key, with t = max(TAT, now): the start
    is due at t - tau; within `ahead` of now it is granted and TAT moves to t + interval, else
    nothing changes but the recorded request. `seen` (the request's time) is taken once, in
    the inserted row, so every expression uses the same instant."""
    due = "greatest(r.tat, excluded.seen) - $3 - excluded.seen"
    return (
        f"INSERT INTO {s}.coord_rate AS r (name, tat, seen, granted) "
        f"SELECT $1, c.now + $2, c.now, true FROM (SELECT {NOW} AS now) AS c "
        f"ON CONFLICT (name) DO UPDATE SET "
        f"tat = CASE WHEN {due} <= $4 THEN greatest(r.tat, excluded.seen) + $2 ELSE r.tat END, "
        f"seen = excluded.seen, granted = ({due} <= $4) "
        "RETURNING tat, seen, granted"
    )
