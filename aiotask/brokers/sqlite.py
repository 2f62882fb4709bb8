"""sqlite:///path — the embedded default broker: one WAL file, a lease column, doorbell waits.

A message is a row of `aiotask_messages`; `eta` is when it is next claimable. A claim is one
`BEGIN IMMEDIATE` transaction whose `UPDATE ... RETURNING` sets `lease_until = eta = now +
lease`, `lease_owner` and `deliveries + 1` on up to `limit` rows with `eta <= now`, ordered by
priority (high first), then eta, then insertion. SQLite's write lock plays the part of Postgres'
`FOR UPDATE SKIP LOCKED` (saq), so two processes never claim one row. Moving `eta` with the
lease keeps the ready rows a prefix of the claim index, and puts a redelivered message behind
the ones that became ready before its lease lapsed (as the memory broker does).

`lease_owner` is unique per claim call (`consumer:n`); ack, nack and extend match it, so a
consumer whose lease lapsed and was re-claimed by another cannot settle or extend the new owner's
claim. `heartbeat()` writes `consumer -> expires_at` to `aiotask_consumers`; a claim first takes
over (lapses at once) every leased row of a consumer whose heartbeat expired, so a dead worker's
messages move in `worker_lost_after`, not `visibility_timeout`. A consumer that never beat keeps
the lease rule alone. A waiter is woken at once by a publish, in this process or (through its
doorbell, aiotask/_sqlite_wake.py) in another, and otherwise sleeps until the next row is due;
without a doorbell it polls with a backoff from POLL_MIN to POLL_MAX. See docs/sqlite.md.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NamedTuple, cast

from aiotask import _sqlite, _sqlite_wake
from aiotask._backoff import Backoff
from aiotask._sqlite import placeholders, transaction
from aiotask._time import now
from aiotask.brokers import _sqlite_admin as admin
from aiotask.brokers import _sqlite_events as _events
from aiotask.brokers import _sqlite_fair
from aiotask.brokers._common import (
    DEAD_LETTER_CAP,
    MAX_PRIORITY,
    clamp_priority,
    exhausted_reason,
    text,
    tokens,
)
from aiotask.brokers.base import (
    END,
    EVENTS_CAP,
    BrokerCapabilities,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Sequence

    from aiotask.settings import Settings

log = logging.getLogger(__name__)

TOPIC = "messages"
EVENTS_TOPIC = "events"
#: A follower reads at most this many events per query.
EVENTS_PAGE = 1000
#: A follower of an idle table polls between these pauses (woken at once in one process).
EVENTS_POLL_MIN = 0.01
EVENTS_POLL_MAX = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aiotask_messages (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    eta REAL NOT NULL,
    lease_until REAL,
    lease_owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    fair_key TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS aiotask_messages_claim
    ON aiotask_messages (queue, priority DESC, eta, id);
CREATE INDEX IF NOT EXISTS aiotask_messages_leased
    ON aiotask_messages (lease_until) WHERE lease_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS aiotask_dead_letters (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    died_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS aiotask_dead_letters_queue ON aiotask_dead_letters (queue, id);
CREATE TABLE IF NOT EXISTS aiotask_consumers (
    owner TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aiotask_events (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL
)
"""
# Schema changes are additive (CREATE ... IF NOT EXISTS): a file made by an older version gets
# the new tables when it is next opened, and an older version ignores them.

_READY = "eta <= ?"
# CAST AS BLOB: a body or id written as TEXT with invalid UTF-8 still comes back, as bytes.
_COLUMNS = "CAST(message_id AS BLOB), queue, priority, deliveries, CAST(body AS BLOB)"
_BURY = (
    "INSERT INTO aiotask_dead_letters "
    "(message_id, queue, priority, deliveries, body, reason, died_at) VALUES (?,?,?,?,?,?,?)"
)


class Token(NamedTuple):
    """What a Delivery's token holds; a tuple, so it binds as (id, lease_owner) parameters."""

    row: int
    owner: str


#: (row id, message id, queue, priority, deliveries, body) of a claimed row.
Row = tuple[int, bytes, str, int, int, bytes]
Buried = tuple[bytes, str, int, int, bytes]


class Claimed(NamedTuple):
    rows: list[Row]
    buried: list[Buried]
    #: consumers whose heartbeat expired, and how many leased rows they lost
    lost: list[tuple[str, int]]
    #: when nothing was claimable: the unix time something next becomes so (None: unknown)
    due: float | None


class SQLiteBroker:
    """sqlite:///relative.db or sqlite:////absolute.db — one machine, no server."""

    capabilities = BrokerCapabilities(
        priorities=True, max_priority=MAX_PRIORITY, native_delay=True, push=False, fairness=True
    )

    def __init__(self, url: str, settings: Settings) -> None:
        self._lease = settings.visibility_timeout
        self._max_deliveries = settings.max_deliveries
        self._lost_after = settings.worker_lost_after
        self._db = _sqlite.Connection(_sqlite.resolve_path(url), _SCHEMA)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()
        self._signal: _sqlite.Signal | None = None
        self._maybe_more = True
        #: from the last empty claim: when something next becomes claimable
        self._due: float | None = None
        #: fairness (brokers/_sqlite_fair.py): the file has the fair_key column and index
        self._fair_ready = False

    @property
    def path(self) -> str:
        """The absolute file, resolved against the working directory at construction."""
        return self._db.path

    async def connect(self) -> None:
        await self._loop_signal()

    async def _loop_signal(self) -> _sqlite.Signal:
        """This instance's wakeup, bound to the running loop (connect() may have run on another)."""
        if self._signal is not None and self._signal.loop is asyncio.get_running_loop():
            return self._signal
        if not self._db.is_open:
            await self._db.open()
        if self._signal is not None:
            _sqlite.unsubscribe(self.path, TOPIC, self._signal)
        self._signal = _sqlite.Signal()
        _sqlite.subscribe(self.path, TOPIC, self._signal)
        return self._signal

    async def close(self) -> None:
        """Hand back every row this instance claimed and did not settle, then close the file."""
        if self._signal is not None:
            _sqlite.unsubscribe(self.path, TOPIC, self._signal)
            self._signal = None
        if not self._db.is_open:
            return
        try:
            released = await self._db.run(_release_all, self._owner)
        except Exception:
            log.exception("could not hand back unsettled messages; their leases will lapse")
        else:
            if released:
                log.info("handed back %d unsettled message(s) on close", released)
                _sqlite.notify(self.path, TOPIC)
        finally:
            await self._db.close()

    async def _ensure_fair(self) -> None:
        if not self._fair_ready:
            await self._db.run(_sqlite_fair.ensure)
            self._fair_ready = True

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        if not batch:
            return
        await self._ensure_fair()
        wall = now()
        rows = [
            (
                o.message_id,
                o.queue,
                clamp_priority(o.priority),
                max(o.eta or wall, 0.0),
                o.body,
                o.fair_key,
            )
            for o in batch
        ]
        await self._db.sized(len(rows))(_insert, rows)
        _sqlite.notify(self.path, TOPIC)  # a delayed one too: waiters sleep until the next due

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Claim up to `limit` ready messages, polling with backoff until there is one."""
        if limit < 1 or not queues:
            return []
        signal = await self._loop_signal()
        poll = Backoff(_sqlite.POLL_MIN, _sqlite.POLL_MAX)
        while True:
            signal.clear()
            got = await self._claim(list(queues), limit)
            if got:
                return got
            delay = poll.next_delay()
            if self._due is not None and _sqlite_wake.has_bell(signal):
                # Every writer rings, so only time itself needs watching: sleep until the
                # next row is due (a delay, a lease), within the safety cap.
                delay = min(max(self._due - now(), _sqlite.POLL_MIN), _sqlite.BELL_WAIT_MAX)
            if await signal.wait(delay):
                poll.reset()
                self._db.recheck()

    async def _claim(self, queues: list[str], limit: int) -> list[Delivery]:
        owner = f"{self._owner}:{next(self._seq)}"
        await self._ensure_fair()
        claim_rows = functools.partial(
            _claim_rows,
            queues=queues,
            limit=limit,
            owner=owner,
            lease=self._lease,
            max_deliveries=self._max_deliveries,
            check_first=not self._maybe_more,
        )
        done, claimed = (
            self._db.attempt(claim_rows) if limit <= _sqlite.QUICK_ROWS else (False, None)
        )
        if not done:
            claim = asyncio.ensure_future(self._db.run(claim_rows))
            try:
                claimed = await asyncio.shield(claim)
            except asyncio.CancelledError:
                # The claim may still commit on the thread; hand its rows back once it does.
                claim.add_done_callback(lambda fut: self._release_orphans(fut, owner))
                raise
        rows, buried, lost, self._due = cast("Claimed", claimed)
        self._maybe_more = len(rows) >= limit
        for consumer, count in lost:
            log.log(
                logging.WARNING if count else logging.INFO,
                "consumer %s is lost (its heartbeat expired): took over its %d unsettled "
                "message(s)",
                consumer,
                count,
            )
        for message_id, queue, _priority, deliveries, _body in buried:
            log.warning(
                "dead-lettered message %s from queue %s: %s",
                text(message_id),
                queue,
                exhausted_reason(deliveries, self._max_deliveries),
            )
        return [
            Delivery(body, queue, text(mid), deliveries, Token(rowid, owner))
            for rowid, mid, queue, _prio, deliveries, body in rows
        ]

    def _release_orphans(self, fut: asyncio.Future[Claimed], owner: str) -> None:
        if fut.cancelled() or fut.exception() is not None or not fut.result().rows:
            return
        log.debug("receive was cancelled after claiming; handing the messages back")
        self._db.submit_nowait(lambda conn: _requeue_owner(conn, owner))
        _sqlite.notify(self.path, TOPIC)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        held = tokens(deliveries, Token)
        if held:
            await self._db.sized(len(held))(
                _settle, "DELETE FROM aiotask_messages WHERE id=? AND lease_owner=?", held
            )

    async def heartbeat(self) -> None:
        """This consumer is alive until now + worker_lost_after; then any claim takes its work."""
        await self._db.run(_beat, self._owner, now() + self._lost_after)

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        requeue: bool,
        reason: str = "",
        counted: bool = False,
    ) -> None:
        held = tokens(deliveries, Token)
        if not held:
            return
        if not requeue:
            await self._db.run(_bury_tokens, held, reason or "rejected")
            return
        wall = now()
        if counted:
            # Started and abandoned: a lease lapsed now. Claimable at once, the delivery stays
            # counted, and the claim dead-letters it once it has had max_deliveries.
            sql = (
                "UPDATE aiotask_messages SET lease_until=?1, eta=?1, lease_owner=NULL "
                "WHERE id=?2 AND lease_owner=?3"
            )
        else:
            # A hand-back is not a failed delivery: undo the claim's increment.
            sql = (
                "UPDATE aiotask_messages SET lease_until=NULL, lease_owner=NULL, eta=?1, "
                "deliveries=max(deliveries - 1, 0) WHERE id=?2 AND lease_owner=?3"
            )
        await self._db.run(_settle, sql, [(wall, *t) for t in held])
        _sqlite.notify(self.path, TOPIC)

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        held = tokens(deliveries, Token)
        if held:
            until = now() + self._lease
            await self._db.run(
                _settle,
                "UPDATE aiotask_messages SET lease_until=?1, eta=?1 WHERE id=?2 AND lease_owner=?3",
                [(until, *t) for t in held],
            )

    async def purge(self, queue: str) -> int:
        """Delete the messages of `queue` that nobody holds (running ones finish normally)."""
        return await self._db.run(_purge, queue)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = await self._db.run(admin.dead_rows, queue, limit)
        return [
            DeadLetter(text(mid), body, reason, queue, at, row)
            for mid, body, reason, at, row in rows
        ]

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        """Delete these dead-letter rows (by row id); returns how many were still there."""
        rows = [d.token for d in dead if isinstance(d.token, int)]
        if not rows:
            return 0
        return await self._db.run(admin.delete_dead, queue, rows)

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        rows = await self._db.run(admin.queue_counts, list(queues))
        return [QueueStats(*row) for row in rows]

    async def known_queues(self) -> list[str]:
        return await self._db.run(admin.queue_names)

    # -- monitoring events (EventStream): a capped table -----------------------------------

    async def emit_events(self, batch: Sequence[bytes]) -> None:
        """Insert the batch and trim the table to the newest EVENTS_CAP: one transaction."""
        if batch:
            await self._db.run(_events.emit, [(body,) for body in batch], EVENTS_CAP)
            _sqlite.notify(self.path, EVENTS_TOPIC)

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Follow the table from its current end (polling; woken at once in this process)."""
        async with self.events_after(END) as feed:
            yield (body async for _id, body in feed)

    @asynccontextmanager
    async def events_after(
        self, cursor: str | None
    ) -> AsyncIterator[AsyncIterator[tuple[str, bytes]]]:
        """Follow the table after row `cursor` (see EventLog)."""
        if not self._db.is_open:
            await self._db.open()
        last = await self._db.run(_events.start, cursor)
        signal = _sqlite.Signal()
        _sqlite.subscribe(self.path, EVENTS_TOPIC, signal)
        try:
            yield self._follow_events(signal, last)
        finally:
            _sqlite.unsubscribe(self.path, EVENTS_TOPIC, signal)

    async def _follow_events(
        self, signal: _sqlite.Signal, last: int
    ) -> AsyncIterator[tuple[str, bytes]]:
        poll = Backoff(EVENTS_POLL_MIN, EVENTS_POLL_MAX)
        while True:
            signal.clear()
            rows = await self._db.run(_events.after, last, EVENTS_PAGE)
            if rows:
                poll.reset()
                last = rows[-1][0]
                for row_id, body in rows:
                    yield str(row_id), body
                continue
            await signal.wait(poll.next_delay())


# --- the functions below run on the connection's thread --------------------------------


def _insert(conn: sqlite3.Connection, rows: list[tuple[str, str, int, float, bytes, str]]) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO aiotask_messages (message_id, queue, priority, eta, body, fair_key) "
            "VALUES (?,?,?,?,?,?)",
            rows,
        )


def _claim_rows(
    conn: sqlite3.Connection,
    queues: list[str],
    limit: int,
    owner: str,
    *,
    lease: float,
    max_deliveries: int,
    check_first: bool,
) -> Claimed:
    qs = placeholders(len(queues))
    wall = now()
    if check_first:
        # A read needs no write lock: an idle poll never blocks the producers. A lost
        # consumer (tiny table, no index needed) is worth the write lock too.
        # The earliest instant something becomes claimable: a ready or delayed row, a lease
        # that lapses (its eta), a consumer whose heartbeat expires. One scan, as EXISTS was.
        due = min(
            (
                t
                for t in conn.execute(
                    f"SELECT (SELECT min(eta) FROM aiotask_messages WHERE queue IN ({qs})), "  # noqa: S608
                    "(SELECT min(expires_at) FROM aiotask_consumers)",
                    queues,
                ).fetchone()
                if t is not None
            ),
            default=None,
        )
        if due is None or due > wall:
            return Claimed([], [], [], due)
    with transaction(conn):
        wall = now()
        lost = _take_over(conn, wall)
        # Lapsed too often: dead-letter instead of delivering (max_deliveries deliveries done).
        # The unary + keeps the planner on the small partial index of leased rows.
        buried: list[Buried] = conn.execute(
            f"DELETE FROM aiotask_messages WHERE lease_until IS NOT NULL AND lease_until <= ? "  # noqa: S608
            f"AND +deliveries >= ? AND +queue IN ({qs}) RETURNING {_COLUMNS}",
            (wall, max_deliveries, *queues),
        ).fetchall()
        if buried:
            conn.executemany(
                _BURY, [(*b, exhausted_reason(b[3], max_deliveries), wall) for b in buried]
            )
            _trim_dead(conn, {b[1] for b in buried})
        if _sqlite_fair.has_fair(conn, queues):  # fairness: round-robin across keys
            return Claimed(
                _sqlite_fair.claim(conn, queues, limit, owner, wall, lease), buried, lost, None
            )
        rows: list[Row] = conn.execute(
            "UPDATE aiotask_messages SET lease_until=?1, eta=?1, lease_owner=?2, "  # noqa: S608
            "deliveries=deliveries + 1 "
            f"WHERE id IN (SELECT id FROM aiotask_messages WHERE queue IN ({qs}) AND {_READY} "
            "ORDER BY priority DESC, eta, id LIMIT ?) "
            "RETURNING id, CAST(message_id AS BLOB), queue, priority, deliveries, "
            "CAST(body AS BLOB)",
            (wall + lease, owner, *queues, wall, limit),
        ).fetchall()
    # RETURNING has no order; within one batch, priority then insertion order is enough.
    rows.sort(key=lambda r: (-r[3], r[0]))
    return Claimed(rows, buried, lost, None)


def _take_over(conn: sqlite3.Connection, wall: float) -> list[tuple[str, int]]:
    """Lapse every lease of the consumers whose heartbeat expired (inside the claim's lock)."""
    gone = conn.execute(
        "DELETE FROM aiotask_consumers WHERE expires_at <= ? RETURNING owner", (wall,)
    ).fetchall()
    return [(owner, _lapse_leases(conn, owner, wall)) for (owner,) in gone]


def _lapse_leases(conn: sqlite3.Connection, consumer: str, wall: float) -> int:
    """Make the rows `consumer` holds claimable now, still counted as a delivery.

    Not a nack: the work may have run, so a message whose consumers keep dying still reaches
    max_deliveries. The owner of a claim is `consumer:n`, hence the prefix match.
    """
    prefix = consumer + ":"
    return conn.execute(
        "UPDATE aiotask_messages SET lease_until=?1, eta=?1, lease_owner=NULL "
        "WHERE lease_until IS NOT NULL AND substr(lease_owner, 1, ?2) = ?3",
        (wall, len(prefix), prefix),
    ).rowcount


def _beat(conn: sqlite3.Connection, consumer: str, expires: float) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO aiotask_consumers (owner, expires_at) VALUES (?, ?) "
            "ON CONFLICT (owner) DO UPDATE SET expires_at=excluded.expires_at",
            (consumer, expires),
        )


def _settle(conn: sqlite3.Connection, sql: str, params: Sequence[tuple[object, ...]]) -> None:
    with transaction(conn):
        conn.executemany(sql, params)


def _bury_tokens(conn: sqlite3.Connection, held: list[Token], reason: str) -> None:
    wall = now()
    with transaction(conn):
        conn.executemany(
            f"INSERT INTO aiotask_dead_letters "  # noqa: S608
            f"(message_id, queue, priority, deliveries, body, reason, died_at) "
            f"SELECT {_COLUMNS}, ?, ? FROM aiotask_messages WHERE id=? AND lease_owner=?",
            [(reason, wall, *t) for t in held],
        )
        ids = placeholders(len(held))
        gone = conn.execute(
            f"SELECT DISTINCT queue FROM aiotask_messages WHERE id IN ({ids})",  # noqa: S608
            [t[0] for t in held],
        ).fetchall()
        conn.executemany("DELETE FROM aiotask_messages WHERE id=? AND lease_owner=?", held)
        _trim_dead(conn, {q for (q,) in gone})


def _trim_dead(conn: sqlite3.Connection, queues: set[str]) -> None:
    """Keep the newest DEAD_LETTER_CAP per queue, as the Redis broker caps its dead stream."""
    conn.executemany(
        "DELETE FROM aiotask_dead_letters WHERE queue=?1 AND id <= (SELECT id FROM "
        "aiotask_dead_letters WHERE queue=?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        [(q, DEAD_LETTER_CAP) for q in queues],
    )


def _requeue_owner(conn: sqlite3.Connection, owner: str) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE aiotask_messages SET lease_until=NULL, lease_owner=NULL, eta=?, "
            "deliveries=max(deliveries - 1, 0) WHERE lease_until IS NOT NULL AND lease_owner=?",
            (now(), owner),
        )


def _release_all(conn: sqlite3.Connection, consumer: str) -> int:
    # A lapsed lease, not a nack: a cold shutdown's messages go on towards max_deliveries.
    # A clean exit is not a lost consumer: its heartbeat row goes too.
    with transaction(conn):
        released = _lapse_leases(conn, consumer, now())
        conn.execute("DELETE FROM aiotask_consumers WHERE owner=?", (consumer,))
    return released


def _purge(conn: sqlite3.Connection, queue: str) -> int:
    wall = now()
    with transaction(conn):
        cur = conn.execute(
            "DELETE FROM aiotask_messages WHERE queue=? "
            "AND (lease_until IS NULL OR lease_until <= ?)",
            (queue, wall),
        )
    return cur.rowcount
