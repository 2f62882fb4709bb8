"""postgresql://user@host/db — a broker in a PostgreSQL schema: SKIP LOCKED claims, LISTEN wakes.

A message is a row of `<key_prefix>.messages`; `eta` is when it is next claimable. A claim is
one statement, run in a function of the schema that plans it once per connection
(aiotask/_postgres/claims.py): `SELECT ... FOR UPDATE SKIP LOCKED` picks up to `limit` ready
rows (priority high first, then eta, then insertion) and leases them: `lease_until = eta =
now + visibility_timeout`, `lease_owner = <consumer>:<n>`, `deliveries + 1` (while keyed rows
are queued: round-robin across fairness keys, aiotask/_postgres/fair.py). A lapsed lease is a
ready row again. A
maintenance transaction, run by a claim every MAINTAIN_EVERY seconds (busy or idle), takes over
the leases of consumers whose heartbeat expired and dead-letters rows whose lease
lapsed `max_deliveries` times (the claim skips those). Ack deletes, nack and extend update, each
matching the owner, so a consumer whose lease lapsed and was re-claimed cannot settle the new
owner's claim (as on SQLite).

Waiting: a publish NOTIFYs the queue's channel in its transaction. An idle `receive` sleeps
until a notification, the next eta of its queues (a delayed message or a lease end) or the
next heartbeat expiry, whichever comes first: no polling. With `?listen=false` (PgBouncer in
transaction mode) or while the LISTEN connection is down, it polls with backoff instead.
See docs/postgres.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

from aiotask import _postgres
from aiotask._backoff import Backoff
from aiotask._time import monotonic, now
from aiotask.brokers import _postgres_admin as admin
from aiotask.brokers import _postgres_sql as q
from aiotask.brokers._common import MAX_PRIORITY, clamp_priority, exhausted_reason, tokens
from aiotask.brokers._postgres_events import Events
from aiotask.brokers._postgres_sql import Token
from aiotask.brokers.base import BrokerCapabilities, DeadLetter, Delivery, Outgoing, QueueStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from contextlib import AbstractAsyncContextManager

    from aiotask.settings import Settings

log = logging.getLogger(__name__)

TOPIC = "messages"
#: A consumer takes over lost consumers and dead-letters exhausted rows this often (seconds),
#: busy or idle; not after every empty claim (a transaction more on each message's path).
MAINTAIN_EVERY = 1.0


def key_head() -> str:
    """The head of a publish's row keys (uuid-sized, as hex, which PostgreSQL casts to a uuid):
    the time in ns and 32 random bits; the statement appends each row's index in the batch
    (8 hex digits). Rising keys are appended at the right edge of the unique index instead of
    touching a random page per row, and the client builds and sends no key per row."""
    return f"{time.time_ns() & 0xFFFF_FFFF_FFFF_FFFF:016x}{os.urandom(4).hex()}"


class PostgresBroker:
    """postgresql://user:password@host:5432/db[?listen=false] — tables in schema key_prefix."""

    capabilities = BrokerCapabilities(
        priorities=True, max_priority=MAX_PRIORITY, native_delay=True, push=True, fairness=True
    )

    def __init__(self, url: str, settings: Settings) -> None:
        self._opts = _postgres.options(url, settings.key_prefix)
        self._db = _postgres.Database(self._opts, settings.broker_unreachable_timeout)
        self._sql_schema = _postgres.ident(settings.key_prefix)
        self._sql = q.SQL(self._sql_schema)
        self._lease = settings.visibility_timeout
        self._max_deliveries = settings.max_deliveries
        self._lost_after = settings.worker_lost_after
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()
        self._maintain_at = 0.0
        #: queue sets whose last claim found keyed rows: claimed fairly (_postgres/fair.py)
        self._keyed: set[str] = set()
        self._wakeups: set[asyncio.Event] = set()
        #: wake-ups so far (NOTIFYs, LISTEN lost, local hand-backs): a claim's look-ahead is
        #: still true while this count has not moved
        self._wakes = 0
        #: (wake-ups before the claim, its queues, its look-ahead) of a claim that drained them
        self._drained: tuple[int, list[str], q.Ahead] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._channel = _postgres.channel(settings.key_prefix, TOPIC)
        self._db.subscribe(TOPIC, self._notified)
        self._events = Events(self._db, self._sql_schema, settings.key_prefix, self._opts.listen)
        self._db.on_listen_lost = self._wake_all

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding this app's tables (its key_prefix)."""
        return self._opts.schema

    async def connect(self) -> None:
        """Create or migrate the tables (idempotent). LISTEN starts with the first receive,
        so a producer-only process holds no LISTEN connection."""
        await self._db.migrate("broker")

    async def close(self) -> None:
        """Hand back every row this instance claimed and did not settle, then disconnect."""
        self._wake_all()
        try:
            released = await asyncio.wait_for(
                self._db.run(
                    lambda c: q.release_all(c, self._sql, self._owner, now()),
                    "hand back unsettled messages",
                ),
                5.0,
            )
        except Exception as exc:
            log.warning("could not hand back unsettled messages (%r); their leases will lapse", exc)
        else:
            if released:
                log.info("handed back %d unsettled message(s) on close", released)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._notify_local(), 2.0)
        finally:
            await self._db.close()

    def _notified(self, _payload: str) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        self._wakes += 1
        for event in self._wakeups:
            event.set()
        self._events.wake()

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        if not batch:
            return
        wall = now()
        first = batch[0]
        queue, priority, eta, fair = first.queue, first.priority, first.eta, first.fair_key
        rows: q.Rows
        if all(
            o.queue == queue and o.priority == priority and o.eta == eta and o.fair_key == fair
            for o in batch
        ):  # one value each for the whole batch
            rows = q.Rows(
                key_head(),
                [o.message_id for o in batch],
                [o.body for o in batch],
                queue,
                clamp_priority(priority),
                max(eta or wall, 0.0),
                fair,  # fairness: see aiotask/_postgres/fair.py
            )
        else:
            rows = q.Rows(
                key_head(),
                [o.message_id for o in batch],
                [o.body for o in batch],
                [o.queue for o in batch],
                [clamp_priority(o.priority) for o in batch],
                [max(o.eta or wall, 0.0) for o in batch],
                [o.fair_key for o in batch],
            )
        # Delayed messages notify too: a sleeping consumer recomputes when to look next.
        channel = self._channel if self._opts.listen else ""
        # Same key head on every attempt: a retry after a lost COMMIT reply inserts nothing twice.
        attempts = itertools.count()
        await self._db.run(
            lambda c: q.insert(c, self._sql, rows, channel, again=next(attempts) > 0), "publish"
        )

    async def receive(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Claim up to `limit` ready messages, sleeping until one is due or notified."""
        if limit < 1 or not queues:
            return []
        wanted = list(queues)
        event = asyncio.Event()
        self._wakeups.add(event)
        poll = Backoff(_postgres.POLL_MIN, _postgres.POLL_MAX)
        try:
            while True:
                listening = await self._db.listening()
                event.clear()  # a NOTIFY from now on wakes the wait below
                ahead = self._still_drained(wanted) if listening else None
                if ahead is None:
                    got, ahead = await self._claim(wanted, limit)
                    if got:
                        return got
                # idle: maintain if due (the sleep below ends by the next heartbeat expiry or
                # lease end, so a lost consumer is still taken over on time); not after every
                # empty claim, which would add a transaction to each message's path
                if monotonic() >= self._maintain_at and await self._maintain(wanted):
                    continue  # took over or buried something: claim again at once
                pause = poll.next_delay()
                if listening:
                    if ahead is None:
                        row = await self._db.run(
                            lambda c: c.fetchrow(self._sql.next_due, wanted, now()), "look ahead"
                        )
                        ahead = q.Ahead(*row) if row is not None else q.Ahead(None, True)
                    if not ahead.skipped:  # else: rows locked elsewhere, poll until they are free
                        poll.reset()
                        due = ahead.due
                        pause = _postgres.IDLE_MAX if due is None else due - now()
                        if pause <= 0:  # a heartbeat expired: the maintenance, when due
                            pause = self._maintain_at - monotonic()
                        pause = min(max(pause, 0.0), _postgres.IDLE_MAX)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await event.wait()
                        poll.reset()
        finally:
            self._wakeups.discard(event)

    def _still_drained(self, queues: list[str]) -> q.Ahead | None:
        """The look-ahead of the last claim, if it drained these queues and nothing could have
        made a row ready since (no wake-up, no due time passed): then claiming again now would
        find nothing, and the consumer goes straight to sleep. Used once."""
        drained, self._drained = self._drained, None
        if drained is None:
            return None
        wakes, names, ahead = drained
        if wakes != self._wakes or names != queues or ahead.skipped:
            return None
        if ahead.due is not None and ahead.due <= now():
            return None
        return ahead

    async def _claim(self, queues: list[str], limit: int) -> tuple[list[Delivery], q.Ahead | None]:
        if monotonic() >= self._maintain_at:
            await self._maintain(queues)
        owner = f"{self._owner}:{next(self._seq)}"
        wakes = self._wakes
        claim = asyncio.ensure_future(
            self._db.run(
                lambda c: q.claim(
                    c,
                    self._sql,
                    queues,
                    limit,
                    owner,
                    wall=now(),
                    lease=self._lease,
                    max_deliveries=self._max_deliveries,
                    keyed=self._keyed,
                ),
                "claim messages",
            )
        )
        try:
            rows, ahead = await asyncio.shield(claim)
        except asyncio.CancelledError:
            # The claim may still commit; hand its rows back once it does (cancel-safe).
            claim.add_done_callback(lambda fut: self._release_orphans(fut, owner))
            raise
        if rows and ahead is not None:  # drained: the next receive may sleep at once
            self._drained = (wakes, list(queues), ahead)
        return [  # in serving order (q.claim sorts them)
            Delivery(body, queue, mid, deliveries, Token(rowid, owner))
            for rowid, mid, queue, _prio, deliveries, body in rows
        ], ahead

    async def _maintain(self, queues: list[str]) -> bool:
        """Take over lost consumers' leases, dead-letter exhausted rows; True if it did."""
        self._maintain_at = monotonic() + MAINTAIN_EVERY
        done = await self._db.run(
            lambda c: q.maintain(
                c, self._sql, queues, wall=now(), max_deliveries=self._max_deliveries
            ),
            "take over lost consumers",
        )
        self._log_claim(done)
        return bool(done.buried) or any(count for _consumer, count in done.lost)

    def _log_claim(self, claimed: q.Claimed) -> None:
        for consumer, count in claimed.lost:
            log.log(
                logging.WARNING if count else logging.INFO,
                "consumer %s is lost (its heartbeat expired): took over its %d unsettled "
                "message(s)",
                consumer,
                count,
            )
        for message_id, queue, deliveries in claimed.buried:
            log.warning(
                "dead-lettered message %s from queue %s: %s",
                message_id,
                queue,
                exhausted_reason(deliveries, self._max_deliveries),
            )

    def _release_orphans(
        self, fut: asyncio.Future[tuple[list[q.Row], q.Ahead | None]], owner: str
    ) -> None:
        if fut.cancelled() or fut.exception() is not None or not fut.result()[0]:
            return
        log.debug("receive was cancelled after claiming; handing the messages back")
        with contextlib.suppress(RuntimeError):  # loop closing: close() or the lease covers it
            task = asyncio.ensure_future(self._requeue_owner(owner))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _requeue_owner(self, owner: str) -> None:
        with contextlib.suppress(Exception):
            await self._db.run(
                lambda c: c.execute(self._sql.requeue_owner, now(), owner), "hand back"
            )
            self._wake_all()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        held = tokens(deliveries, Token)
        if held:
            await self._db.run(lambda c: q.settle(c, self._sql.ack, held), "ack")

    async def heartbeat(self) -> None:
        """This consumer is alive until now + worker_lost_after; then any claim takes its work."""
        expires = now() + self._lost_after
        await self._db.run(lambda c: c.execute(self._sql.beat, self._owner, expires), "heartbeat")

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
        wall = now()
        if not requeue:
            await self._db.run(
                lambda c: q.bury(c, self._sql, held, reason or "rejected", wall), "dead-letter"
            )
            return
        # counted: started and abandoned, a lease lapsed now (goes on towards max_deliveries)
        sql = self._sql.nack_counted if counted else self._sql.nack_uncounted
        await self._db.run(lambda c: q.settle(c, sql, held, wall), "nack")
        await self._notify_local()

    async def _notify_local(self) -> None:
        """Wake this process's waiters; other processes learn from NOTIFY or their timers."""
        self._wake_all()
        if self._opts.listen:
            await self._db.run(
                lambda c: c.execute("SELECT pg_notify($1, '')", self._channel), "notify"
            )

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        held = tokens(deliveries, Token)
        if held:
            until = now() + self._lease
            await self._db.run(lambda c: q.settle(c, self._sql.extend, held, until), "extend")

    async def purge(self, queue: str) -> int:
        """Delete the messages of `queue` that nobody holds (running ones finish normally)."""
        return await self._db.run(
            lambda c: admin.count(c.execute(self._sql.purge, queue, now())), "purge"
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = await self._db.run(
            lambda c: admin.dead_rows(c, self.schema, queue, limit), "read dead letters"
        )
        return [
            DeadLetter(mid, body, reason, queue, at, row) for mid, body, reason, at, row in rows
        ]

    async def delete_dead_letters(self, queue: str, dead: Sequence[DeadLetter]) -> int:
        """Delete these dead-letter rows (by row id); returns how many were still there."""
        rows = [d.token for d in dead if isinstance(d.token, int)]
        if not rows:
            return 0
        return await self._db.run(
            lambda c: admin.delete_dead(c, self.schema, queue, rows), "delete dead letters"
        )

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        rows = await self._db.run(
            lambda c: admin.queue_counts(c, self.schema, list(queues), now()), "count queues"
        )
        return [QueueStats(*row) for row in rows]

    async def known_queues(self) -> list[str]:
        return await self._db.run(lambda c: admin.queue_names(c, self.schema), "list queues")

    # -- monitoring events (EventStream; see _postgres_events) -----------------------------

    async def emit_events(self, batch: Sequence[bytes]) -> None:
        await self._events.emit(batch)

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._events.follow()

    def events_after(
        self, cursor: str | None
    ) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, bytes]]]:
        return self._events.follow_after(cursor)
