"""postgresql://user@host/db — results, group progress and revocations in the app's schema.

- First final writer wins in SQL: an UPSERT whose DO UPDATE only applies while the stored row
  is not ready (or has expired), so the check and the write are one statement.
- Expired rows are invisible to every read and deleted in batches (`cleanup`, run from
  `store` every CLEANUP_EVERY calls, CLEANUP_ROWS rows or CLEANUP_INTERVAL seconds):
  retention is `result_expires`.
- `wait` is woken by NOTIFY: a store of a ready result notifies its task id in the same
  transaction, with the result itself when small (no read then); one watcher per backend
  fetches exactly the other ids it was told about (plus new waits: subscribe, then read).
  With `?listen=false` or while the LISTEN connection is down it polls every waited id in
  one query per tick instead.
- Groups: members are rows keyed by (group_id, idx), so a duplicate report is a no-op; the
  group row is locked (FOR UPDATE) while a report counts, so exactly one report fires.
- Control broadcasts and replies are rows (kept briefly) plus a NOTIFY wake-up, so they also
  work, polled, without LISTEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from aiotask import _postgres
from aiotask._backoff import Backoff
from aiotask._time import monotonic, now
from aiotask.backends import _postgres_results as sql
from aiotask.backends._coord_postgres import PostgresCoordinationStore
from aiotask.backends._history_postgres import PostgresHistoryStore
from aiotask.backends._lock_postgres import PostgresLockStore
from aiotask.backends._schedule_postgres import PostgresScheduleStore
from aiotask.backends._waiters import Waiters
from aiotask.backends.base import (
    DECIDED,
    SENT,
    EncodedResult,
    GroupProgress,
    MemberReport,
    ResultRecord,
    decode_record,
)
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from aiotask.settings import Settings

log = logging.getLogger(__name__)

RESULTS, CONTROL, REPLIES = "results", "control", "replies"
#: Lazy TTL cleanup: every this many store() calls, or this many rows stored (half a cleanup
#: batch, so a steady stream's expired rows go at least as fast as new ones come), or after
#: this many seconds.
CLEANUP_EVERY = 500
CLEANUP_ROWS = sql.CLEANUP_BATCH // 2
CLEANUP_INTERVAL = 60.0
#: Longest pause between two polls of the control and reply tables without a NOTIFY.
CONTROL_POLL_MAX = 0.5


class PostgresBackend:
    """postgresql://user:password@host:5432/db[?listen=false] — tables in schema key_prefix."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._opts = _postgres.options(url, settings.key_prefix)
        self._db = _postgres.Database(self._opts, settings.broker_unreachable_timeout)
        self._s = _postgres.ident(settings.key_prefix)
        self._waiters = Waiters()
        #: waited ids to look up on the next watcher turn (new waits, notified ids)
        self._pending: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._control_events: set[asyncio.Event] = set()
        self._reply_events: set[asyncio.Event] = set()
        self._channels = {
            t: _postgres.channel(settings.key_prefix, t) for t in (RESULTS, CONTROL, REPLIES)
        }
        self._db.subscribe(RESULTS, self._result_notified)
        self._db.subscribe(CONTROL, lambda _p: _set_all(self._control_events))
        self._db.subscribe(REPLIES, lambda _p: _set_all(self._reply_events))
        self._db.on_listen_lost = self._listen_lost
        self._stores = self._stored_rows = 0
        self._cleaned_at = monotonic()

    async def connect(self) -> None:
        """Create or migrate the tables (idempotent)."""
        await self._db.migrate("backend")

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._waiters.fail("result backend closed during wait")
        await self._db.close()

    def _channel(self, topic: str) -> str | None:
        return self._channels[topic] if self._opts.listen else None

    async def store(self, results: Sequence[EncodedResult]) -> None:
        if not results:
            return
        wall = now()
        # One row per id (an UPSERT cannot touch a row twice), as if stored one by one: a
        # later record replaces an earlier one unless the earlier one is final.
        kept: dict[str, EncodedResult] = {}
        for r in results:
            if r.task_id not in kept or not kept[r.task_id].ready:
                kept[r.task_id] = r
        results = list(kept.values())
        rows = (
            [r.task_id for r in results],
            [r.state for r in results],
            [r.ready for r in results],
            [r.data for r in results],
            [wall + r.ttl for r in results],
        )
        channel = self._channel(RESULTS) or ""
        await self._db.run(lambda c: sql.upsert(c, self._s, rows, wall, channel), "store results")
        self._stores += 1
        self._stored_rows += len(results)
        if (
            self._stores >= CLEANUP_EVERY
            or self._stored_rows >= CLEANUP_ROWS
            or monotonic() - self._cleaned_at >= CLEANUP_INTERVAL
        ):
            await self.cleanup()

    async def cleanup(self) -> int:
        """Delete a batch of expired results, groups, tombstones and replies."""
        self._stores, self._stored_rows, self._cleaned_at = 0, 0, monotonic()
        removed = await self._db.run(lambda c: sql.cleanup(c, self._s, now()), "prune results")
        if removed:
            log.debug("deleted %d expired row(s) from schema %s", removed, self._opts.schema)
        return removed

    async def get(self, task_id: str) -> ResultRecord | None:
        return (await self.get_many([task_id]))[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        ids = list(task_ids)
        found = dict(
            await self._db.run(lambda c: sql.fetch(c, self._s, ids, now(), False), "get results")
        )
        return [decode_record(found[t]) if t in found else None for t in task_ids]

    # -- waiting ---------------------------------------------------------------------------

    async def wait(self, task_id: str, timeout: float | None) -> ResultRecord:
        def added() -> None:
            self._pending.add(task_id)  # subscribe (the watcher listens), then read
            self._ensure_watcher()

        return decode_record(await self._waiters.wait(task_id, timeout, added))

    def _result_notified(self, payload: str) -> None:
        task_id, data = sql.parse_notice(payload)
        if task_id not in self._waiters:
            return
        if not data:  # too large for the notification: read it
            self._pending.add(task_id)
            self._wake.set()
            return
        self._waiters.deliver([(task_id, sql.notice_data(data))])

    def _listen_lost(self) -> None:
        self._pending.update(self._waiters)
        self._wake.set()
        _set_all(self._control_events)
        _set_all(self._reply_events)

    def _ensure_watcher(self) -> None:
        loop = asyncio.get_running_loop()
        watcher = self._watcher
        if watcher is None or watcher.done() or watcher.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._watcher = loop.create_task(self._watch(), name="aiotask-postgres-wait")
        else:
            self._wake.set()

    async def _watch(self) -> None:
        """Look up the pending ids (all waited ids when polling); exits when nobody waits."""
        poll = Backoff(_postgres.POLL_MIN, _postgres.POLL_MAX)
        was_listening = True
        while self._waiters:
            self._wake.clear()
            listening = await self._db.listening()
            if not listening or not was_listening:
                self._pending.update(self._waiters)  # nothing told us what we missed
            was_listening = listening
            ids = [t for t in self._pending if t in self._waiters]
            self._pending.clear()
            if ids:
                try:
                    if await self._resolve(ids):
                        poll.reset()
                except BrokerConnectionError as exc:
                    self._fail_waits(exc)
                    return
            if not self._waiters:
                return
            if self._pending:
                continue
            pause = _postgres.IDLE_MAX if listening else poll.next_delay()
            try:
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            except TimeoutError:
                # nothing woke us: look at every waited id (polling does anyway; with LISTEN
                # up this is the safety net for a notification that never came)
                self._pending.update(self._waiters)

    async def _resolve(self, ids: list[str]) -> bool:
        """Hand the ready results among `ids` to their waiters; True when there was one."""
        found = await self._db.run(
            lambda c: sql.fetch(c, self._s, ids, now(), True), "read results"
        )
        return self._waiters.deliver(found)

    def _fail_waits(self, exc: BrokerConnectionError) -> None:
        log.error("gave up reading results; failing %d wait(s): %s", len(self._waiters), exc)
        self._waiters.fail(str(exc))

    # -- groups, revocations ---------------------------------------------------------------

    async def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            ids = list(task_ids)
            await self._db.run(
                lambda c: c.execute(
                    f"DELETE FROM {self._s}.results WHERE task_id = ANY($1::text[])", ids
                ),
                "forget results",
            )

    async def open_group(self, group_id: str, size: int, body: bytes | None, ttl: float) -> None:
        await self._db.run(
            lambda c: c.execute(
                f"INSERT INTO {self._s}.groups (group_id, size, body, expires_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (group_id) DO NOTHING",
                group_id,
                size,
                body,
                now() + ttl,
            ),
            "open a group",
        )

    async def add_to_group(self, group_id: str, index: int, result: EncodedResult) -> GroupProgress:
        return (await self.add_to_groups([MemberReport(group_id, index, result)]))[0]

    async def add_to_groups(self, reports: Sequence[MemberReport]) -> list[GroupProgress]:
        if not reports:
            return []
        batch = list(reports)
        return await self._db.run(
            lambda c: sql.add_to_groups(c, self._s, batch, now()), "report group members"
        )

    async def groups_sent(self, group_ids: Sequence[str]) -> None:
        if group_ids:
            ids = list(group_ids)
            await self._db.run(
                lambda c: c.execute(
                    f"UPDATE {self._s}.groups SET "
                    "fired = CASE WHEN fired = $1 THEN $2 ELSE fired END, "
                    "failed = CASE WHEN failed = $1 THEN $2 ELSE failed END "
                    "WHERE group_id = ANY($3::text[])",
                    DECIDED,
                    SENT,
                    ids,
                ),
                "mark groups sent",
            )

    async def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        if task_ids:
            ids, expires = list(task_ids), now() + ttl
            await self._db.run(
                lambda c: c.execute(
                    f"INSERT INTO {self._s}.revoked (task_id, expires_at) "
                    "SELECT t, $2 FROM unnest($1::text[]) AS t ON CONFLICT (task_id) "
                    "DO UPDATE SET expires_at = excluded.expires_at",
                    ids,
                    expires,
                ),
                "revoke",
            )

    async def revocations(self) -> frozenset[str]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT task_id FROM {self._s}.revoked WHERE expires_at > $1", now()
            ),
            "read revocations",
        )
        return frozenset(r[0] for r in rows)

    # -- control channel, worker registry, replies ------------------------------------------

    async def broadcast(self, payload: bytes) -> None:
        """Append to the control table and NOTIFY: every control() iterator reads it."""
        channel = self._channel(CONTROL)
        await self._db.run(
            lambda c: sql.broadcast(c, self._s, payload, now(), channel), "broadcast"
        )
        _set_all(self._control_events)

    async def control(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """Payloads broadcast after this call; woken by NOTIFY, polled without it."""
        event = asyncio.Event()
        self._control_events.add(event)
        try:
            last = await self._db.run(
                lambda c: c.fetchval(f"SELECT coalesce(max(id), 0) FROM {self._s}.control"),
                "read the control table",
            )
            if subscribed is not None:
                subscribed()
            poll = Backoff(_postgres.POLL_MIN, CONTROL_POLL_MAX)
            while True:
                listening = await self._db.listening()
                event.clear()
                rows = await self._db.run(
                    functools.partial(sql.control_after, s=self._s, after=last),
                    "read the control table",
                )
                if rows:
                    last = rows[-1][0]
                    for _id, payload in rows:
                        yield payload
                    poll.reset()
                    continue
                pause = _postgres.IDLE_MAX if listening else poll.next_delay()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await event.wait()
        finally:
            self._control_events.discard(event)

    async def register_worker(self, name: str, record: bytes, ttl: float) -> None:
        await self._db.run(
            lambda c: c.execute(
                f"INSERT INTO {self._s}.workers (name, record, expires_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET record = excluded.record, "
                "expires_at = excluded.expires_at",
                name,
                record,
                now() + ttl,
            ),
            "register a worker",
        )

    async def unregister_worker(self, name: str) -> None:
        await self._db.run(
            lambda c: c.execute(f"DELETE FROM {self._s}.workers WHERE name = $1", name),
            "unregister a worker",
        )

    async def workers(self) -> dict[str, bytes]:
        rows = await self._db.run(
            lambda c: c.fetch(
                f"SELECT name, record FROM {self._s}.workers WHERE expires_at > $1 ORDER BY name",
                now(),
            ),
            "list workers",
        )
        return {r[0]: bytes(r[1]) for r in rows}

    async def reply(self, reply_to: str, payload: bytes, ttl: float) -> None:
        channel = self._channel(REPLIES)
        await self._db.run(
            lambda c: sql.reply(c, self._s, reply_to, payload, now() + ttl, channel), "reply"
        )
        _set_all(self._reply_events)

    async def replies(self, reply_to: str, wait: float) -> list[bytes]:
        """Every reply so far, waiting up to `wait` s for the first (NOTIFY, or polled)."""
        event = asyncio.Event()
        self._reply_events.add(event)
        try:
            deadline = monotonic() + wait
            poll = Backoff(_postgres.POLL_MIN, CONTROL_POLL_MAX)
            while True:
                listening = await self._db.listening()
                event.clear()
                got = await self._db.run(
                    lambda c: sql.take_replies(c, self._s, reply_to), "read replies"
                )
                left = deadline - monotonic()
                if got or left <= 0:
                    return got
                pause = left if listening else min(poll.next_delay(), left)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await event.wait()
        finally:
            self._reply_events.discard(event)

    def history_store(self, app_name: str) -> PostgresHistoryStore:
        return PostgresHistoryStore(self._db, self._s, app_name)

    def schedule_store(self, app_name: str) -> PostgresScheduleStore:
        return PostgresScheduleStore(self._db, self._s, app_name)

    def lock_store(self) -> PostgresLockStore:
        return PostgresLockStore(self._db, self._s)

    def coordination_store(self, app_name: str) -> PostgresCoordinationStore:
        return PostgresCoordinationStore(self._db, self._s, self._opts.schema, app_name)


def _set_all(events: set[asyncio.Event]) -> None:
    for event in events:
        event.set()
