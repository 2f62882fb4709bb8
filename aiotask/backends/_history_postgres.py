"""Task history in the PostgreSQL schema: one table (migration step 2 of the backend), the
same queries as the SQLite store."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiotask.backends._schedule_postgres import _Migrated
from aiotask.history import Bucket, HistoryRecord, buckets_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import asyncpg

    from aiotask._postgres import Database
    from aiotask.history import HistoryQuery


class PostgresHistoryStore:
    """HistoryStore on the result backend's pool; `s` is the quoted schema."""

    def __init__(self, db: Database, s: str, app_name: str) -> None:
        self._db = _Migrated(db)
        self._s = s
        self._app = app_name

    async def put(self, records: Sequence[HistoryRecord]) -> None:
        if not records:
            return
        rows = [
            (
                *(self._app, r.id, r.name, r.state, r.worker, r.updated_at),
                *(r.root_id, r.group_id, r.text(), r.to_json()),
            )
            for r in records
        ]
        await self._db.run(
            lambda c: c.executemany(
                f"INSERT INTO {self._s}.task_history VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
                "ON CONFLICT (app, id) DO UPDATE SET name = excluded.name, "
                "state = excluded.state, worker = excluded.worker, "
                "updated_at = excluded.updated_at, root_id = excluded.root_id, "
                "group_id = excluded.group_id, text = excluded.text, blob = excluded.blob",
                rows,
            ),
            "write task history",
        )

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, HistoryRecord]:
        if not task_ids:
            return {}
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT blob FROM {self._s}.task_history WHERE app = $1 AND id = ANY($2)",
                self._app,
                list(task_ids),
            ),
            "read task history",
        )
        found = [HistoryRecord.from_json(bytes(r[0])) for r in rows]
        return {r.id: r for r in found}

    def _where(self, query: HistoryQuery) -> tuple[str, list[Any]]:
        params: list[Any] = [self._app]
        clauses = ["app = $1"]

        def add(sql: str, value: Any) -> None:
            params.append(value)
            clauses.append(sql.replace("?", f"${len(params)}"))

        for column, value in (
            ("state", query.state),
            ("name", query.name),
            ("worker", query.worker),
        ):
            if value:
                add(f"{column} = ?", value)
        if query.since is not None:
            add("updated_at >= ?", query.since)
        if query.until is not None:
            add("updated_at <= ?", query.until)
        needle = query.q.strip()
        if needle:
            params += [needle, needle.lower()]
            a, b = len(params) - 1, len(params)
            clauses.append(
                f"(starts_with(id, ${a}) OR strpos(lower(name), ${b}) > 0 "
                f"OR strpos(text, ${b}) > 0)"
            )
        return " AND ".join(clauses), params

    async def search(self, query: HistoryQuery) -> tuple[list[HistoryRecord], int]:
        where, params = self._where(query)
        n = len(params)

        async def run(c: asyncpg.Connection) -> tuple[list[HistoryRecord], int]:
            total = await c.fetchval(
                f"SELECT count(*) FROM {self._s}.task_history WHERE {where}",
                *params,
            )
            rows = await c.fetch(
                f"SELECT blob FROM {self._s}.task_history WHERE {where} "
                f"ORDER BY updated_at DESC LIMIT ${n + 1} OFFSET ${n + 2}",
                *params,
                query.limit,
                query.offset,
            )
            return [HistoryRecord.from_json(bytes(r[0])) for r in rows], int(total)

        return await self._db.run(run, "search task history")

    async def family(self, root_id: str, limit: int) -> list[HistoryRecord]:
        s = self._s
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT blob FROM {s}.task_history WHERE app = $1 AND id = $2 UNION "
                f"SELECT blob FROM {s}.task_history WHERE app = $1 AND root_id = $2 UNION "
                f"SELECT blob FROM {s}.task_history WHERE app = $1 AND group_id = $2 LIMIT $3",
                self._app,
                root_id,
                limit,
            ),
            "read a workflow",
        )
        found = [HistoryRecord.from_json(bytes(r[0])) for r in rows]
        return sorted(found, key=lambda r: r.seen_at)

    async def counts(self) -> dict[str, int]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT state, count(*) FROM {self._s}.task_history WHERE app = $1 GROUP BY state",
                self._app,
            ),
            "count task history",
        )
        return {r[0]: int(r[1]) for r in rows}

    async def finished(self, since: float, width: float) -> list[Bucket]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT floor((updated_at - $2) / $3)::int, state, count(*) "
                f"FROM {self._s}.task_history WHERE app = $1 AND "
                "state IN ('SUCCESS', 'FAILURE') AND updated_at >= $2 GROUP BY 1, 2",
                self._app,
                since,
                width,
            ),
            "chart task history",
        )
        counted = [(int(r[0]), r[1], int(r[2])) for r in rows]
        return buckets_of(counted, since, width, time.time())

    async def prune(self, retention: Mapping[str, float], now: float, batch: int) -> int:
        async def run(c: asyncpg.Connection) -> int:
            gone = 0
            for state, keep in retention.items():
                status = await c.execute(
                    f"DELETE FROM {self._s}.task_history WHERE ctid IN (SELECT ctid FROM "
                    f"{self._s}.task_history WHERE app = $1 AND state = $2 AND "
                    "updated_at < $3 LIMIT $4)",
                    self._app,
                    state,
                    now - keep,
                    batch,
                )
                gone += int(status.split()[-1])
            return gone

        return await self._db.run(run, "prune task history")

    async def clear(self) -> None:
        await self._db.run(
            self._clear,
            "clear task history",
        )

    async def _clear(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            for table in ("task_history", "task_history_cursor"):
                await conn.execute(f"DELETE FROM {self._s}.{table} WHERE app = $1", self._app)

    async def delete(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        status = await self._db.run(
            lambda c: c.execute(
                f"DELETE FROM {self._s}.task_history WHERE app = $1 AND id = ANY($2)",
                self._app,
                list(task_ids),
            ),
            "delete task history",
        )
        return int(str(status).rsplit(" ", 1)[-1])

    async def get_cursor(self) -> str | None:
        found = await self._db.run(
            lambda c: c.fetchval(
                f"SELECT cursor FROM {self._s}.task_history_cursor WHERE app = $1", self._app
            ),
            "read task history cursor",
        )
        return None if found is None else str(found)

    async def put_cursor(self, cursor: str) -> None:
        await self._db.run(
            lambda c: c.execute(
                f"INSERT INTO {self._s}.task_history_cursor VALUES ($1, $2) "
                "ON CONFLICT (app) DO UPDATE SET cursor = excluded.cursor",
                self._app,
                cursor,
            ),
            "write task history cursor",
        )
