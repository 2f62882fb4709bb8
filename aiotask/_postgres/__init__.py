"""Shared plumbing of the PostgreSQL broker and backend: URL options, a pool, retries, LISTEN.

- One asyncpg pool per broker/backend instance, bound to the loop that made it (a later call
  on another loop makes a new pool), plus one dedicated connection for LISTEN.
- Every call goes through `Database.run`, which retries a lost or refused connection (server
  restart, failover) with backoff for `broker_unreachable_timeout`, then raises
  BrokerConnectionError with the redacted URL. Every statement that may be retried is
  idempotent or runs in a transaction that either committed or did not.
- The tables live in one schema per app: its name is `key_prefix` (default "aiotask"), so apps
  (and tests) sharing a database never see each other. Tables are created and migrated by
  `aiotask._postgres.schema` on connect, or ahead of time by `aiotask db upgrade`.

Our own URL query options (taken out before the DSN reaches asyncpg):
- `listen=false`: no LISTEN/NOTIFY (PgBouncer in transaction mode); waits poll instead.
  With LISTEN on, each new LISTEN connection checks that a NOTIFY reaches it (`_probe`).
- `pool_size=N`: connections in the pool (default 10).
- `statement_cache_size=N`: asyncpg's prepared-statement cache (0 behind PgBouncer < 1.21).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from aiotask._backoff import Backoff
from aiotask._urls import redact
from aiotask.exceptions import BrokerConnectionError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = frozenset({"postgresql", "postgres"})
#: Pauses between polls when LISTEN is off (`?listen=false`) or its connection is down.
POLL_MIN = 0.005
POLL_MAX = 0.5
#: Longest idle wait even with LISTEN on: a safety net for a lost notification, not a poll.
IDLE_MAX = 30.0
#: How long a new LISTEN connection waits for its own test notification (see `_probe`).
PROBE_TIMEOUT = 5.0
DEFAULT_POOL = 10
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: Errors that mean "the server is unreachable or restarting": retried with backoff.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock: retry
    asyncpg.exceptions.InternalClientError,
)
#: TRANSIENT plus every error the server reports.
ANY_ERROR: tuple[type[BaseException], ...] = (*TRANSIENT, asyncpg.PostgresError)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *ANY_ERROR)
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*_CLOSE_ERRORS, BrokerConnectionError)


@dataclass(frozen=True, slots=True)
class Options:
    """A postgresql:// URL split into the DSN asyncpg gets and our own options."""

    dsn: str
    schema: str
    listen: bool
    pool_size: int
    statement_cache_size: int | None
    #: the URL with its password masked, for messages
    shown: str


def options(url: str, schema: str) -> Options:
    """Parse our query options out of `url`; `schema` is the app's key_prefix."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigurationError(f"not a PostgreSQL URL: {redact(url)!r}")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in {"listen", "pool_size", "statement_cache_size"}:
            ours[key] = value.lower()
        else:
            theirs.append((key, value))
    listen = ours.get("listen", "true")
    if listen not in _TRUE | _FALSE:
        raise ConfigurationError(f"{redact(url)!r}: listen must be true or false")
    try:
        pool = int(ours.get("pool_size", DEFAULT_POOL))
        cache = int(ours["statement_cache_size"]) if "statement_cache_size" in ours else None
    except ValueError:
        raise ConfigurationError(
            f"{redact(url)!r}: pool_size and statement_cache_size must be integers"
        ) from None
    if pool < 1:
        raise ConfigurationError(f"{redact(url)!r}: pool_size must be at least 1")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(theirs), ""))
    return Options(dsn, schema, listen in _TRUE, pool, cache, redact(url))


#: A FROM item that makes its statement's transaction commit without waiting for the WAL
#: flush (`synchronous_commit = off` for this transaction only; works through PgBouncer, no
#: session state). Only for commits whose loss in a server crash means a redelivery and on
#: which nothing made later relies: claims, acks, nacks, lease renewals, heartbeats. Never for
#: a write that a later step takes as done, such as a result store before its ack: the crash
#: need not reach the writer as an error, the next step may simply run on the restarted server
#: (docs/postgres.md, "Reliability").
NO_SYNC = "(SELECT set_config('synchronous_commit', 'off', true)) AS no_sync"


def ident(name: str) -> str:
    """`name` as a quoted SQL identifier (schema names come from settings, not users' data)."""
    return '"' + name.replace('"', '""') + '"'


def channel(schema: str, topic: str) -> str:
    """The NOTIFY channel of one topic of one schema (a plain string; LISTEN quotes it)."""
    return f"aiotask:{schema}:{topic}"[:63]


class Database:
    """A pool and a LISTEN connection for one broker or backend instance."""

    def __init__(self, opts: Options, unreachable: float) -> None:
        self.opts = opts
        self._unreachable = unreachable
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._listener: asyncpg.Connection | None = None
        self._topics: dict[str, Callable[[str], None]] = {}
        #: called when the LISTEN connection is lost (waiters look again, then poll)
        self.on_listen_lost: Callable[[], None] | None = None
        #: components ("broker", "backend") whose migrations ran through this instance
        self._migrated: set[str] = set()
        #: set when a test notification never arrived (PgBouncer in transaction mode): poll
        self.listen_broken = False

    def _connect_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.opts.statement_cache_size is not None:
            kw["statement_cache_size"] = self.opts.statement_cache_size
        return kw

    async def pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            if self._pool is not None:  # made on another loop: cannot be awaited here
                self._pool.terminate()
                self._pool, self._listener = None, None
            self._loop = loop
        async with self._lock:
            if self._pool is None:
                # min_size=0: connections are made on demand, so no background task of the
                # pool's keeps reconnecting while the server is down (we retry in run()).
                self._pool = await asyncpg.create_pool(
                    self.opts.dsn,
                    min_size=0,
                    reset=_reset,
                    max_size=self.opts.pool_size,
                    **self._connect_kwargs(),
                )
        return self._pool

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], what: str) -> T:
        """`fn(conn)` on a pooled connection, retried while the server is unreachable."""
        backoff = Backoff(0.05, 2.0, deadline=self._unreachable)
        while True:
            try:
                pool = await self.pool()
                async with pool.acquire() as conn:
                    # a pooled proxy forwards every Connection method
                    return await fn(cast("asyncpg.Connection", conn))
            except TRANSIENT as exc:
                if not backoff.failing:
                    log.warning(
                        "PostgreSQL %s unreachable while trying to %s (%s: %s); retrying for "
                        "up to %.0fs",
                        self.opts.shown,
                        what,
                        type(exc).__name__,
                        exc,
                        self._unreachable,
                    )
                if not await backoff.sleep():
                    raise BrokerConnectionError(
                        f"cannot {what} on PostgreSQL {self.opts.shown}: {exc} (gave up after "
                        f"{self._unreachable:.0f}s; is the server up and reachable?)"
                    ) from exc
            except asyncpg.PostgresError as exc:
                raise BrokerConnectionError(
                    f"cannot {what} on PostgreSQL {self.opts.shown}: {exc}"
                ) from exc

    async def migrate(self, component: str) -> None:
        """Create or migrate `component`'s tables once per instance (idempotent anyway)."""
        if component in self._migrated:
            return
        from aiotask._postgres import schema

        await self.run(
            lambda c: schema.migrate(c, self.opts.schema, component), "create the tables"
        )
        self._migrated.add(component)

    # -- LISTEN --------------------------------------------------------------------------

    def subscribe(self, topic: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` for each NOTIFY on `topic` once `listening()` succeeded."""
        self._topics[channel(self.opts.schema, topic)] = callback

    async def listening(self) -> bool:
        """Make sure the LISTEN connection is up; False when LISTEN is off or unreachable.

        After a False, or after a reconnect, the caller must look at the table again:
        notifications sent while nobody listened are gone.
        """
        if not self.opts.listen or self.listen_broken:
            return False
        conn = self._listener
        if conn is not None and not conn.is_closed() and self._loop is asyncio.get_running_loop():
            return True
        await self.pool()  # binds to this loop (and makes the lock)
        async with (
            self._lock or asyncio.Lock()
        ):  # one LISTEN connection, however many waiters ask at once
            if self._listener is not None and not self._listener.is_closed():
                return True
            return await self._listen()

    async def _listen(self) -> bool:
        try:
            conn = await asyncpg.connect(self.opts.dsn, **self._connect_kwargs())
        except ANY_ERROR as exc:
            log.debug("LISTEN connection to %s failed: %s", self.opts.shown, exc)
            return False
        kept = False
        try:  # every way out but success closes it: a cancelled probe must not leak it
            for name, callback in self._topics.items():
                await conn.add_listener(name, _relay(callback))
            if not await self._probe(conn) or self._pool is None:  # None: closed meanwhile
                return False
            conn.add_termination_listener(self._listen_lost)
            self._listener, kept = conn, True
            return True
        except ANY_ERROR as exc:
            log.debug("LISTEN on %s failed: %s", self.opts.shown, exc)
            return False
        finally:
            if not kept:
                conn.terminate()

    async def _probe(self, conn: asyncpg.Connection) -> bool:
        """Send a NOTIFY through the pool and see it arrive on the LISTEN connection.

        Behind PgBouncer in transaction (or statement) mode, LISTEN succeeds but binds to
        whichever server connection ran it, which goes back to the pool at once: every later
        notification is lost, and waits would sleep IDLE_MAX between looks. Detected here, it
        is logged once and this instance polls instead, as with `?listen=false`.
        """
        token = uuid.uuid4().hex
        name = channel(self.opts.schema, "probe")
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            if payload == token and not arrived.done():
                arrived.set_result(None)

        try:
            await conn.add_listener(name, heard)
            # bounded: a server going down meanwhile is not a diagnosis (retry next time)
            await asyncio.wait_for(
                self.run(lambda c: c.execute("SELECT pg_notify($1, $2)", name, token), "probe"),
                PROBE_TIMEOUT,
            )
        except _PROBE_ERRORS as exc:
            log.debug("LISTEN probe on %s failed: %s", self.opts.shown, exc)
            return False
        try:
            await asyncio.wait_for(arrived, PROBE_TIMEOUT)
            await conn.remove_listener(name, heard)
        except _PROBE_ERRORS as exc:
            if isinstance(exc, TimeoutError):
                self.listen_broken = True
                log.warning(
                    "LISTEN on PostgreSQL %s: a test notification did not arrive within %.0fs, "
                    "so notifications do not reach this connection (PgBouncer in transaction "
                    "or statement mode?). Polling instead; add ?listen=false to the URL to say "
                    "so and skip this check, or use session pooling or a direct connection",
                    self.opts.shown,
                    PROBE_TIMEOUT,
                )
            else:
                log.debug("LISTEN probe on %s failed: %s", self.opts.shown, exc)
            return False
        return True

    def _listen_lost(self, conn: object) -> None:
        if conn is self._listener:
            self._listener = None
            log.debug("LISTEN connection to %s lost; polling until it is back", self.opts.shown)
            if self.on_listen_lost is not None:
                self.on_listen_lost()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        same_loop = self._loop is asyncio.get_running_loop()
        if listener is not None:
            if same_loop:
                with contextlib.suppress(*ANY_ERROR):
                    await asyncio.wait_for(listener.close(), 5.0)
            if not listener.is_closed():
                listener.terminate()
        if pool is not None:
            if same_loop:
                try:
                    await asyncio.wait_for(pool.close(), 5.0)
                except _CLOSE_ERRORS:
                    pool.terminate()
            else:
                pool.terminate()


async def _reset(conn: asyncpg.Connection) -> None:
    """Replaces the pool's reset query on release (one round trip per call saved): our calls
    leave no session state (no LISTEN, SET or cursor on pooled connections; advisory locks are
    transaction-scoped). asyncpg itself rolls back a transaction left open."""


def _relay(callback: Callable[[str], None]) -> Callable[[object, int, str, str], None]:
    def relay(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return relay
