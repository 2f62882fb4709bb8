"""Unique/debounce locks in the PostgreSQL schema: one row per lock in `locks`, expiry on the
server's clock, every operation one statement (atomic without a transaction of ours).

`acquire` must answer "taken" or "held by X" in one step, also when a hundred producers race
for one name. Its statement locks the live row if there is one (FOR UPDATE: the newest
version, whoever committed it), else inserts; an INSERT that meets a row committed after the
statement's snapshot inserts nothing and finds nothing, and the statement runs again (the
next snapshot sees that row). `Database.run` retries a call whose connection broke; a retry
may find the previous attempt's commit, which `_Attempts` tells apart (see there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._time import monotonic
from aiotask.exceptions import AiotaskError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from aiotask._postgres import Database

#: The server's clock in epoch seconds (every expiry is on it: clients' clocks may be skewed).
NOW = "extract(epoch FROM clock_timestamp())::float8"
#: Rounds of `acquire`'s statement; a round repeats only when a row appeared mid-statement.
ROUNDS = 20
#: Expired locks are deleted (in batches) by a release at most this often, in seconds.
PRUNE_EVERY = 30.0
PRUNE_BATCH = 1000


class PostgresLockStore:
    """LockStore on the result backend's pool; `s` is the quoted schema (one per key_prefix)."""

    def __init__(self, db: Database, s: str) -> None:
        self._db = db
        self._s = s
        self._pruned_at = monotonic()

    async def acquire(self, name: str, owner: str, ttl: float) -> str | None:
        await self._db.migrate("backend")
        attempts = _Attempts()

        async def call(conn: asyncpg.Connection) -> str | None:
            retried = attempts.next()
            for _ in range(ROUNDS):
                row = await conn.fetchrow(_acquire_sql(self._s), name, owner, ttl)
                assert row is not None  # noqa: S101 - SELECT of two scalars: always one row
                if row[0] is not None:
                    return None
                if row[1] is not None:
                    # our own earlier attempt committed before its connection broke: ours
                    return None if retried and row[1] == owner else str(row[1])
            raise AiotaskError(f"unique lock {name!r} changed hands {ROUNDS} times in one acquire")

        return await self._db.run(call, "take a unique lock")

    async def swap(self, name: str, expect: str, owner: str, ttl: float) -> bool:
        await self._db.migrate("backend")
        attempts = _Attempts()

        async def call(conn: asyncpg.Connection) -> bool:
            # after a broken connection, the lock may already be ours: that swap committed
            current = owner if attempts.next() else expect
            status = await conn.execute(
                f"UPDATE {self._s}.locks SET owner = $3, expires_at = {NOW} + $4 "
                f"WHERE name = $1 AND owner IN ($2, $5) AND expires_at > {NOW}",
                name,
                expect,
                owner,
                ttl,
                current,
            )
            return status.endswith(" 1")

        return await self._db.run(call, "hand over a unique lock")

    async def put(self, name: str, owner: str, ttl: float) -> None:
        await self._db.migrate("backend")
        await self._db.run(
            lambda c: c.execute(
                f"INSERT INTO {self._s}.locks (name, owner, expires_at) "
                f"VALUES ($1, $2, {NOW} + $3) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at",
                name,
                owner,
                ttl,
            ),
            "record a debounced send",
        )

    async def get(self, name: str) -> str | None:
        await self._db.migrate("backend")
        held = await self._db.run(
            lambda c: c.fetchval(
                f"SELECT owner FROM {self._s}.locks WHERE name = $1 AND expires_at > {NOW}", name
            ),
            "read a unique lock",
        )
        return None if held is None else str(held)

    async def release(self, locks: Sequence[tuple[str, str]]) -> None:
        if not locks:
            return
        await self._db.migrate("backend")
        names, owners = [n for n, _ in locks], [o for _, o in locks]
        await self._db.run(
            lambda c: c.execute(
                f"DELETE FROM {self._s}.locks AS l USING unnest($1::text[], $2::text[]) "
                "AS r(name, owner) WHERE l.name = r.name AND l.owner = r.owner",
                names,
                owners,
            ),
            "release unique locks",
        )
        if monotonic() - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = monotonic()
            await self._db.run(
                lambda c: c.execute(
                    f"DELETE FROM {self._s}.locks WHERE name IN (SELECT name FROM "
                    f"{self._s}.locks WHERE expires_at <= {NOW} LIMIT {PRUNE_BATCH})"
                ),
                "prune expired locks",
            )


def _acquire_sql(s: str) -> str:
    """(taken, held): our name if we took the lock; else the live holder; (NULL, NULL) when a
    row committed after this statement's snapshot was in the way (run it again)."""
    return (
        f"WITH held AS MATERIALIZED (SELECT owner FROM {s}.locks "
        f"WHERE name = $1 AND expires_at > {NOW} FOR UPDATE), "
        f"took AS (INSERT INTO {s}.locks AS l (name, owner, expires_at) "
        f"SELECT $1, $2, {NOW} + $3 WHERE NOT EXISTS (SELECT 1 FROM held) "
        "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
        f"expires_at = excluded.expires_at WHERE l.expires_at <= {NOW} RETURNING l.owner) "
        "SELECT (SELECT owner FROM took) AS taken, (SELECT owner FROM held) AS held"
    )


class _Attempts:
    """Counts the tries `Database.run` makes of one call: a second try follows a broken
    connection, whose statement may have committed (the reply was lost)."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> bool:
        """True when this is a retry."""
        self._n += 1
        return self._n > 1
