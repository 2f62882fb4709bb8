"""The beat store in the PostgreSQL schema: three tables, each claim batch in one transaction.

A claim locks the entry's mark row (or its absence, through the primary key of the INSERT), so
two beats never both win one slot; the same compare-and-set rules as the SQLite store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from aiotask.beat.store import StoredState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import asyncpg

    from aiotask._postgres import Database
    from aiotask.beat.store import Claim

T = TypeVar("T")


class _Migrated:
    """The database, with the backend's tables made before the first call (a beat may use
    the store before anything connected the backend)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], what: str) -> T:
        await self._db.migrate("backend")
        return await self._db.run(fn, what)


class PostgresScheduleStore:
    """ScheduleStore on the result backend's pool; `s` is the quoted schema."""

    def __init__(self, db: Database, s: str, app_name: str) -> None:
        self._database = db
        self._s = s
        self._app = app_name

    @property
    def _db(self) -> _Migrated:
        return _Migrated(self._database)

    async def entries(self) -> dict[str, bytes]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT name, blob FROM {self._s}.beat_entries WHERE app = $1 AND dynamic",
                self._app,
            ),
            "read schedules",
        )
        return {r[0]: bytes(r[1]) for r in rows}

    async def put_entry(self, name: str, blob: bytes) -> None:
        await self._db.run(
            lambda c: c.execute(
                f"INSERT INTO {self._s}.beat_entries (app, name, blob, dynamic) "
                "VALUES ($1, $2, $3, true) ON CONFLICT (app, name) DO UPDATE "
                "SET blob = excluded.blob, dynamic = true",
                self._app,
                name,
                blob,
            ),
            "write a schedule",
        )

    async def remove_entry(self, name: str) -> bool:
        return await self._db.run(lambda c: self._remove(c, name), "remove a schedule")

    async def _remove(self, conn: asyncpg.Connection, name: str) -> bool:
        s, app = self._s, self._app
        async with conn.transaction():
            gone = await conn.fetchval(
                f"DELETE FROM {s}.beat_entries WHERE app = $1 AND name = $2 RETURNING dynamic",
                app,
                name,
            )
            await conn.execute(
                f"DELETE FROM {s}.beat_marks WHERE app = $1 AND name = $2", app, name
            )
            await conn.execute(
                f"DELETE FROM {s}.beat_skips WHERE app = $1 AND name = $2", app, name
            )
        return bool(gone)

    async def paused(self) -> set[str]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT name FROM {self._s}.beat_entries WHERE app = $1 AND paused", self._app
            ),
            "read paused schedules",
        )
        return {r[0] for r in rows}

    async def set_paused(self, name: str, paused: bool) -> None:
        # a static entry (defined in code) gets a row that only carries its paused flag
        await self._db.run(
            lambda c: c.execute(
                f"INSERT INTO {self._s}.beat_entries (app, name, blob, paused, dynamic) "
                "VALUES ($1, $2, '', $3, false) ON CONFLICT (app, name) DO UPDATE "
                "SET paused = excluded.paused",
                self._app,
                name,
                paused,
            ),
            "pause a schedule",
        )

    async def states(self, names: Sequence[str]) -> dict[str, StoredState]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT name, mark, state FROM {self._s}.beat_marks "
                "WHERE app = $1 AND name = ANY($2::text[])",
                self._app,
                list(names),
            ),
            "read schedule marks",
        )
        return {
            r[0]: StoredState(int(r[1]), bytes(r[2]) if r[2] is not None else None) for r in rows
        }

    async def skip_counts(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT name, reason, n FROM {self._s}.beat_skips "
                "WHERE app = $1 AND name = ANY($2::text[])",
                self._app,
                list(names),
            ),
            "read schedule skips",
        )
        out: dict[str, dict[str, int]] = {}
        for name, reason, n in rows:
            out.setdefault(name, {})[reason] = int(n)
        return out

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        return await self._db.run(lambda c: self._claim(c, list(claims)), "claim schedule slots")

    async def _claim(self, conn: asyncpg.Connection, claims: list[Claim]) -> list[bool]:
        s, app = self._s, self._app
        won: list[bool] = []
        async with conn.transaction():
            for c in claims:
                # Create the row if absent (no-op otherwise), then lock it: beats serialize here.
                await conn.execute(
                    f"INSERT INTO {s}.beat_marks (app, name, mark, state) "
                    "VALUES ($1, $2, -1, NULL) ON CONFLICT (app, name) DO NOTHING",
                    app,
                    c.name,
                )
                row = await conn.fetchrow(
                    f"SELECT mark, state FROM {s}.beat_marks WHERE app = $1 AND name = $2 "
                    "FOR UPDATE",
                    app,
                    c.name,
                )
                if row is None:  # inserted above; only remove_entry deletes marks
                    won.append(False)
                    continue
                absent = row["mark"] == -1 and row["state"] is None
                if c.expect is not None:
                    ok = not absent and bytes(row["state"] or b"") == c.expect
                elif c.init:
                    ok = absent
                else:  # still the watermark the beat planned from (None: still none)
                    ok = (None if absent else int(row["mark"])) == c.since_ms
                if ok:
                    mark = row["mark"] if c.expect is not None else c.through_ms
                    await conn.execute(
                        f"UPDATE {s}.beat_marks SET mark = $3, state = $4 "
                        "WHERE app = $1 AND name = $2",
                        app,
                        c.name,
                        mark,
                        c.state,
                    )
                elif absent:
                    await conn.execute(
                        f"DELETE FROM {s}.beat_marks WHERE app = $1 AND name = $2 AND mark = -1",
                        app,
                        c.name,
                    )
                won.append(ok)
        return won

    async def settle(
        self, confirms: Sequence[tuple[str, int, bytes]], skips: Sequence[tuple[str, str, int]]
    ) -> None:
        s, app = self._s, self._app

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                if confirms:
                    await conn.executemany(
                        f"UPDATE {s}.beat_marks SET state = $1 "
                        "WHERE app = $2 AND name = $3 AND mark = $4",
                        [(state, app, name, through) for name, through, state in confirms],
                    )
                if skips:
                    await conn.executemany(
                        f"INSERT INTO {s}.beat_skips (app, name, reason, n) "
                        "VALUES ($1, $2, $3, $4) ON CONFLICT (app, name, reason) "
                        f"DO UPDATE SET n = {s}.beat_skips.n + excluded.n",
                        [(app, name, reason, n) for name, reason, n in skips],
                    )

        await self._db.run(run, "settle schedule slots")
