"""sqlite:///path — results, group progress and revocations in the broker's file (own tables).

- First final writer wins in SQL: an UPSERT whose DO UPDATE only applies while the stored row
  is not ready (or has expired), so the check and the write are one atomic statement.
- Expired rows are invisible to every read and deleted lazily (`cleanup`, run from `store`).
- `wait` cannot be woken across processes, so one poller per backend checks every waited id in
  ONE query per tick (backoff POLL_MIN..POLL_MAX); a store in this process wakes it at once.
  When the file cannot be read it retries for `broker_unreachable_timeout`, then fails the
  waits with BrokerConnectionError instead of leaving them hanging.
- Groups: members are rows keyed by (group_id, idx), so a duplicate report is a no-op; the
  count, the fire decision and the flags change in one BEGIN IMMEDIATE transaction, one for
  a whole batch of reports. `fired`/`failed` hold 0 (undecided), 1 (decided) or 2 (sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import orjson

from aiotask import _sqlite, _sqlite_wake
from aiotask._backoff import Backoff
from aiotask._sqlite import transaction
from aiotask._time import monotonic, now
from aiotask.backends import _control_sqlite as _control
from aiotask.backends._waiters import Waiters
from aiotask.backends.base import (
    DECIDED,
    SENT,
    EncodedResult,
    GroupProgress,
    MemberReport,
    ResultRecord,
    decode_record,
    group_step,
)
from aiotask.exceptions import BrokerConnectionError
from aiotask.states import FAILURE, SUCCESS

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Callable, Sequence

    from aiotask.backends._coord_sqlite import SQLiteCoordinationStore
    from aiotask.backends._history_sqlite import SQLiteHistoryStore
    from aiotask.backends._lock_sqlite import SQLiteLockStore
    from aiotask.backends._schedule_sqlite import SQLiteScheduleStore
    from aiotask.settings import Settings

log = logging.getLogger(__name__)

TOPIC = "results"
CONTROL_TOPIC = "control"
REPLIES_TOPIC = "replies"
#: Control payloads are kept this long (seconds), for listeners between two polls.
CONTROL_KEEP = 60.0
#: Longest pause between two polls of the control table; broadcasts are rare and best effort.
CONTROL_POLL_MAX = 0.5
#: Lazy TTL cleanup: every this many store() calls, or after this many seconds.
CLEANUP_EVERY = 500
CLEANUP_INTERVAL = 60.0
#: Rows deleted per table per cleanup, so one store never stalls on a huge backlog.
CLEANUP_BATCH = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aiotask_results (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    ready INTEGER NOT NULL,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aiotask_results_expires ON aiotask_results (expires_at);
CREATE TABLE IF NOT EXISTS aiotask_groups (
    group_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    body BLOB,
    fired INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aiotask_group_members (
    group_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (group_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aiotask_revoked (
    task_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aiotask_control (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    sent_at REAL NOT NULL
)
"""

# Ids travel as one JSON array parameter: one statement for any count, no variable limit.
_IDS = "SELECT value FROM json_each(?)"


class SQLiteBackend:
    """sqlite:///relative.db or sqlite:////absolute.db — shares the file with the broker."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._db = _sqlite.Connection(_sqlite.resolve_path(url), _SCHEMA + ";" + _control.SCHEMA)
        self._prefix = settings.key_prefix
        self._unreachable = settings.broker_unreachable_timeout
        self._signal: _sqlite.Signal | None = None
        self._waiters = Waiters()
        self._poller: asyncio.Task[None] | None = None
        self._stores = 0
        self._cleaned_at = monotonic()

    @property
    def path(self) -> str:
        """The absolute file, resolved against the working directory at construction."""
        return self._db.path

    async def connect(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        self._waiters.fail("result backend closed during wait")
        await self._db.close()

    async def store(self, results: Sequence[EncodedResult]) -> None:
        if not results:
            return
        wall = now()
        rows = [(r.task_id, r.state, int(r.ready), r.data, wall + r.ttl, wall) for r in results]
        await self._db.sized(len(rows))(_upsert, rows)
        if any(r.ready for r in results):
            _sqlite.notify(self.path, TOPIC)
        self._stores += 1
        if self._stores >= CLEANUP_EVERY or monotonic() - self._cleaned_at >= CLEANUP_INTERVAL:
            await self.cleanup()

    async def cleanup(self) -> int:
        """Delete expired results, groups and tombstones (reads already ignore them)."""
        self._stores, self._cleaned_at = 0, monotonic()
        removed = await self._db.run(_cleanup, now())
        if removed:
            log.debug("deleted %d expired row(s) from %s", removed, self.path)
        return removed

    async def get(self, task_id: str) -> ResultRecord | None:
        return (await self.get_many([task_id]))[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        found = dict(await self._db.sized(len(task_ids))(_fetch, list(task_ids), now(), False))
        return [decode_record(found[t]) if t in found else None for t in task_ids]

    async def wait(self, task_id: str, timeout: float | None) -> ResultRecord:
        return decode_record(await self._waiters.wait(task_id, timeout, self._ensure_poller))

    def _ensure_poller(self) -> None:
        loop = asyncio.get_running_loop()
        poller = self._poller
        if poller is None or poller.done() or poller.get_loop() is not loop:
            self._signal = _sqlite.Signal()
            self._poller = loop.create_task(self._poll(self._signal), name="aiotask-sqlite-wait")
        elif self._signal is not None:
            self._signal.fire()  # a new id: look at once (its record may already be there)

    async def _poll(self, signal: _sqlite.Signal) -> None:
        """One query per tick for every waited id; exits when nobody waits."""
        _sqlite.subscribe(self.path, TOPIC, signal)
        poll = Backoff(_sqlite.POLL_MIN, _sqlite.POLL_MAX)
        outage = Backoff(_sqlite.POLL_MIN, _sqlite.POLL_MAX, deadline=self._unreachable)
        try:
            while self._waiters:
                signal.clear()
                try:
                    waited = list(self._waiters)
                    found = await self._db.sized(len(waited))(_fetch, waited, now(), True)
                except BrokerConnectionError as exc:
                    if not outage.failing:  # once per outage, not once per tick
                        log.warning(
                            "cannot read results, retrying for up to %.0fs: %s",
                            self._unreachable,
                            exc,
                        )
                    if not await outage.sleep():
                        self._fail_waits(exc)
                    continue
                outage.reset()
                self._waiters.deliver(found)
                # With a doorbell every store rings: the backoff is only a safety net then.
                delay = poll.next_delay()
                if _sqlite_wake.has_bell(signal):
                    delay = _sqlite.BELL_WAIT_MAX
                if found:
                    poll.reset()
                elif await signal.wait(delay):
                    poll.reset()
                    self._db.recheck()
        finally:
            _sqlite.unsubscribe(self.path, TOPIC, signal)

    def _fail_waits(self, exc: BrokerConnectionError) -> None:
        log.error(
            "gave up reading results after %.0fs; failing %d wait(s)",
            self._unreachable,
            len(self._waiters),
        )
        self._waiters.fail(str(exc))

    async def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self._db.run(_forget, list(task_ids))

    async def open_group(self, group_id: str, size: int, body: bytes | None, ttl: float) -> None:
        await self._db.run(_open_group, group_id, size, body, now() + ttl)

    async def add_to_group(self, group_id: str, index: int, result: EncodedResult) -> GroupProgress:
        return (await self.add_to_groups([MemberReport(group_id, index, result)]))[0]

    async def add_to_groups(self, reports: Sequence[MemberReport]) -> list[GroupProgress]:
        if not reports:
            return []
        return await self._db.run(_add_to_groups, list(reports), now())

    async def groups_sent(self, group_ids: Sequence[str]) -> None:
        if group_ids:
            await self._db.run(_groups_sent, list(group_ids))

    async def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        if task_ids:
            expires = now() + ttl
            await self._db.run(_revoke, [(t, expires) for t in task_ids])

    async def revocations(self) -> frozenset[str]:
        return frozenset(await self._db.run(_revocations, now()))

    async def broadcast(self, payload: bytes) -> None:
        """Append to the control table; listeners in this process are woken at once."""
        await self._db.run(_broadcast, payload, now())
        _sqlite.notify(self.path, CONTROL_TOPIC)

    async def control(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """Payloads broadcast after this call, polled (POLL_MIN..CONTROL_POLL_MAX)."""
        signal = _sqlite.Signal()
        _sqlite.subscribe(self.path, CONTROL_TOPIC, signal)
        try:
            last = await self._db.run(_control_head)
            if subscribed is not None:
                subscribed()
            poll = Backoff(_sqlite.POLL_MIN, CONTROL_POLL_MAX)
            while True:
                signal.clear()
                rows = await self._db.run(_control_after, last)
                if rows:
                    last = rows[-1][0]
                    for _id, payload in rows:
                        yield payload
                    poll.reset()
                elif await signal.wait(poll.next_delay()):
                    poll.reset()
        finally:
            _sqlite.unsubscribe(self.path, CONTROL_TOPIC, signal)

    async def register_worker(self, name: str, record: bytes, ttl: float) -> None:
        await self._db.run(_control.register, self._prefix, name, record, now() + ttl)

    async def unregister_worker(self, name: str) -> None:
        await self._db.run(_control.unregister, self._prefix, name)

    async def workers(self) -> dict[str, bytes]:
        return await self._db.run(_control.workers, self._prefix, now())

    async def reply(self, reply_to: str, payload: bytes, ttl: float) -> None:
        wall = now()
        await self._db.run(_control.reply, reply_to, payload, wall + ttl, wall)
        _sqlite.notify(self.path, REPLIES_TOPIC)

    async def replies(self, reply_to: str, wait: float) -> list[bytes]:
        """Polled (POLL_MIN..CONTROL_POLL_MAX); a reply from this process wakes it at once."""
        signal = _sqlite.Signal()
        _sqlite.subscribe(self.path, REPLIES_TOPIC, signal)
        try:
            deadline = monotonic() + wait
            poll = Backoff(_sqlite.POLL_MIN, CONTROL_POLL_MAX)
            while True:
                signal.clear()
                got = await self._db.run(_control.take_replies, reply_to)
                left = deadline - monotonic()
                if got or left <= 0:
                    return got
                await signal.wait(min(poll.next_delay(), left))
        finally:
            _sqlite.unsubscribe(self.path, REPLIES_TOPIC, signal)

    def history_store(self, app_name: str) -> SQLiteHistoryStore:
        from aiotask.backends._history_sqlite import SQLiteHistoryStore

        return SQLiteHistoryStore(self._db, f"{self._prefix}:{app_name}")

    def schedule_store(self, app_name: str) -> SQLiteScheduleStore:
        from aiotask.backends._schedule_sqlite import SQLiteScheduleStore

        return SQLiteScheduleStore(self._db, f"{self._prefix}:{app_name}")

    def lock_store(self) -> SQLiteLockStore:
        from aiotask.backends._lock_sqlite import SQLiteLockStore

        return SQLiteLockStore(self._db, f"{self._prefix}:")

    def coordination_store(self, app_name: str) -> SQLiteCoordinationStore:
        from aiotask.backends._coord_sqlite import SQLiteCoordinationStore

        return SQLiteCoordinationStore(self._db, f"{self._prefix}:{app_name}")


# --- the functions below run on the connection's thread --------------------------------


def _upsert(
    conn: sqlite3.Connection, rows: list[tuple[str, str, int, bytes, float, float]]
) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO aiotask_results (task_id, state, ready, data, expires_at) "
            "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (task_id) DO UPDATE SET "
            "state=excluded.state, ready=excluded.ready, data=excluded.data, "
            "expires_at=excluded.expires_at "
            "WHERE aiotask_results.ready = 0 OR aiotask_results.expires_at <= ?6",
            rows,
        )


def _fetch(
    conn: sqlite3.Connection, task_ids: list[str], wall: float, ready_only: bool
) -> list[tuple[str, bytes]]:
    rows: list[tuple[str, bytes]] = conn.execute(
        f"SELECT task_id, data FROM aiotask_results WHERE task_id IN ({_IDS}) "  # noqa: S608
        "AND expires_at > ? AND ready >= ?",
        (orjson.dumps(task_ids).decode(), wall, int(ready_only)),
    ).fetchall()
    return rows


def _forget(conn: sqlite3.Connection, task_ids: list[str]) -> None:
    with transaction(conn):
        conn.execute(
            f"DELETE FROM aiotask_results WHERE task_id IN ({_IDS})",  # noqa: S608
            (orjson.dumps(task_ids).decode(),),
        )


def _cleanup(conn: sqlite3.Connection, wall: float) -> int:
    removed = 0
    with transaction(conn):
        for table, key in (("aiotask_results", "task_id"), ("aiotask_revoked", "task_id")):
            removed += conn.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608
                "WHERE expires_at <= ? LIMIT ?)",
                (wall, CLEANUP_BATCH),
            ).rowcount
        gone = conn.execute(
            "DELETE FROM aiotask_groups WHERE group_id IN (SELECT group_id FROM aiotask_groups "
            "WHERE expires_at <= ? LIMIT ?) RETURNING group_id",
            (wall, CLEANUP_BATCH),
        ).fetchall()
        conn.executemany("DELETE FROM aiotask_group_members WHERE group_id = ?", gone)
        removed += len(gone)
    return removed


def _open_group(
    conn: sqlite3.Connection, group_id: str, size: int, body: bytes | None, expires: float
) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO aiotask_groups (group_id, size, body, expires_at) VALUES (?,?,?,?) "
            "ON CONFLICT (group_id) DO NOTHING",
            (group_id, size, body, expires),
        )


def _add_to_groups(
    conn: sqlite3.Connection, reports: list[MemberReport], wall: float
) -> list[GroupProgress]:
    with transaction(conn):
        return [_report(conn, r, wall) for r in reports]


def _report(conn: sqlite3.Connection, report: MemberReport, wall: float) -> GroupProgress:
    group_id, result = report.group_id, report.result
    group = conn.execute(
        "SELECT size, body, fired, failed FROM aiotask_groups WHERE group_id=? AND expires_at > ?",
        (group_id, wall),
    ).fetchone()
    if group is None:
        return GroupProgress(size=0, done=0)
    size, body, fired, failed = group
    new = conn.execute(
        "INSERT INTO aiotask_group_members (group_id, idx, state, data) VALUES (?,?,?,?) "
        "ON CONFLICT (group_id, idx) DO NOTHING",
        (group_id, report.index, result.state, result.data),
    ).rowcount
    done, succeeded, recorded = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state = ?1), "
        "max(CASE WHEN idx = ?2 THEN state END) FROM aiotask_group_members WHERE group_id=?3",
        (str(SUCCESS), report.index, group_id),
    ).fetchone()
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
        conn.execute(
            "UPDATE aiotask_groups SET fired=?, failed=? WHERE group_id=?",
            (now_fired, now_failed, group_id),
        )
    if step in ("fire", "fire_again"):
        data = conn.execute(
            "SELECT data FROM aiotask_group_members WHERE group_id=? ORDER BY idx", (group_id,)
        ).fetchall()
        records = [decode_record(d) for (d,) in data]
        again = step == "fire_again"
        return GroupProgress(
            size, done, fire=not again, fire_again=again, body=body, records=records
        )
    if step in ("first_failure", "failure_again"):
        first = step == "first_failure"
        return GroupProgress(size, done, first_failure=first, failure_again=not first, body=body)
    return GroupProgress(size, done)


def _groups_sent(conn: sqlite3.Connection, group_ids: list[str]) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE aiotask_groups SET "
            "fired = CASE WHEN fired = ?1 THEN ?2 ELSE fired END, "
            "failed = CASE WHEN failed = ?1 THEN ?2 ELSE failed END "
            "WHERE group_id IN (SELECT value FROM json_each(?3))",
            (DECIDED, SENT, orjson.dumps(group_ids).decode()),
        )


def _revoke(conn: sqlite3.Connection, rows: list[tuple[str, float]]) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO aiotask_revoked (task_id, expires_at) VALUES (?,?) "
            "ON CONFLICT (task_id) DO UPDATE SET expires_at=excluded.expires_at",
            rows,
        )


def _broadcast(conn: sqlite3.Connection, payload: bytes, wall: float) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM aiotask_control WHERE sent_at < ?", (wall - CONTROL_KEEP,))
        conn.execute(
            "INSERT INTO aiotask_control (payload, sent_at) VALUES (?, ?)", (payload, wall)
        )


def _control_head(conn: sqlite3.Connection) -> int:
    """The newest id: a new listener sees only what is broadcast after it started."""
    head: int = conn.execute("SELECT coalesce(max(id), 0) FROM aiotask_control").fetchone()[0]
    return head


def _control_after(conn: sqlite3.Connection, after: int) -> list[tuple[int, bytes]]:
    rows: list[tuple[int, bytes]] = conn.execute(
        "SELECT id, CAST(payload AS BLOB) FROM aiotask_control WHERE id > ? ORDER BY id",
        (after,),
    ).fetchall()
    return rows


def _revocations(conn: sqlite3.Connection, wall: float) -> list[str]:
    rows = conn.execute("SELECT task_id FROM aiotask_revoked WHERE expires_at > ?", (wall,))
    return [r[0] for r in rows.fetchall()]
