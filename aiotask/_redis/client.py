"""One place for Redis client set-up, error mapping and retries (broker and backend alike).

Errors are told apart because the advice differs: a refused password or a missing permission
is a configuration problem (retrying cannot help, "is the server running?" would mislead); a
connection failure may be an outage and is retried for `broker_unreachable_timeout`; any other
error reply is the server refusing one command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiotask import _hooks, _tls
from aiotask._backoff import Backoff
from aiotask._redis.cluster import is_cluster_url, make_cluster_client
from aiotask._redis.conn import (
    FastPackSentinelConnection,
    FastPackSentinelSSLConnection,
    FastPackSSLConnection,
    connection_class,
    driver_kwargs,
)
from aiotask._urls import parse_sentinel, redact
from aiotask.exceptions import AiotaskError, BrokerConnectionError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: A single-node client or a cluster client (redis+cluster://): most commands are common.
Client = Redis | RedisCluster
_warned: set[str] = set()

#: Errors that say "the server could not be reached or stopped answering": worth a retry.
RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
#: Errors that say "the server answered: these credentials may not do this": never retried.
AUTH_ERRORS = (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)


def retryable(exc: BaseException | None) -> bool:
    """True for a connection failure or timeout; False for auth, TLS and other server errors."""
    if exc is None or _tls.permanent(exc):
        return False
    return isinstance(exc, RETRYABLE) and not isinstance(exc, AUTH_ERRORS)


@contextlib.contextmanager
def map_errors(url: str, what: str = "Redis") -> Iterator[None]:
    """redis-py errors -> BrokerConnectionError naming the (redacted) server and the remedy."""
    try:
        yield
    except AiotaskError:
        raise
    except AUTH_ERRORS as exc:
        raise BrokerConnectionError(
            f"{what} at {redact(url)} refused the credentials: {redact(str(exc))}; check the "
            "user name and password in the URL (redis://user:password@host:port/db) and the "
            "user's ACL permissions"
        ) from exc
    except RETRYABLE as exc:
        tls_error = _tls.failure(exc)
        if tls_error is not None:
            raise BrokerConnectionError(_tls.describe(tls_error, what, url)) from exc
        if isinstance(exc.__context__, ConfigurationError):  # a TLS file gone since start
            raise exc.__context__ from None  # pragma: no cover - needs a file removed mid-run
        raise BrokerConnectionError(
            f"cannot reach {what} at {redact(url)}: {redact(str(exc)) or type(exc).__name__}; "
            f"is the server running and reachable?{_tls.reset_hint(url, exc)}"
        ) from exc
    except RedisError as exc:
        raise BrokerConnectionError(
            f"{what} at {redact(url)} answered with an error: {redact(str(exc))}"
        ) from exc


def make_client(url: str, name: str | None = None, tls: _tls.TLSOptions | None = None) -> Client:
    """A client with our connection class; redis-py's own retries and socket timeouts off.

    No socket_timeout: redis-py would route every write through asyncio.wait_for, which on
    Python 3.11 can swallow a cancellation (worker shutdown hangs). Callers guard hung servers
    with their own asyncio.timeout, and retry with `retrying()` within their deadline.
    `url` is a `_tls.resolve()`d one: the TLS options are in `tls`, not in its query.
    """
    extra: dict[str, Any] = {}  # `tls` only for FastPackSSLConnection
    if tls is not None:
        _tls.context_for(tls)  # a missing or bad file: ConfigurationError now, not per retry
        extra["tls"] = tls
    if is_cluster_url(url):
        return make_cluster_client(url, name, tls)
    # redis-py swaps in its own SSLConnection for a rediss:// URL, dropping our class: give it
    # the redis:// form, our class decides TLS.
    pool_url = "redis" + url[6:] if url[:7].lower() == "rediss:" else url
    return Redis.from_url(
        pool_url,
        connection_class=connection_class(url),
        **extra,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=None,
        socket_connect_timeout=5.0,
        client_name=name,
        **driver_kwargs(),
    )


class _Sentinel(Sentinel):
    """redis-py's Sentinel, with a discover_master that may run concurrently.

    redis-py's (8.1) moves the sentinel that named the primary to the front with an index swap
    into the list it is iterating. Two connections asking at once (after a failover, every
    connection of the pool reconnects) can then write one sentinel into two places and drop
    another (e.g. [s2, s2, s3]): it is never asked again, and `aclose()` never closes it, so
    its pooled connections were collected unclosed ("ResourceWarning: unclosed Connection").
    Here each call walks a copy and moves the sentinel by identity.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for sentinel in list(self.sentinels):
            try:
                # a dict by service name (redis-py reads it so too; its type says dict | list)
                masters = cast("dict[str, dict[str, Any]]", await sentinel.sentinel_masters())
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                found = [i for i, other in enumerate(self.sentinels) if other is sentinel]
                if found:  # ask it first next time (no await in between: no race)
                    first, i = self.sentinels[0], found[0]
                    self.sentinels[0], self.sentinels[i] = sentinel, first
                forced = getattr(self, "_force_master_ip", None)  # redis-py 5.0.x: none
                ip = state["ip"] if forced is None else forced
                return ip, state["port"]
        said = f" : {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{said}")


def _sentinel_client(
    url: str, name: str | None, tls: _tls.TLSOptions | None = None
) -> tuple[Redis, Sentinel]:
    """A client of the primary the sentinels name; each new connection asks them again, so
    after a failover the next (re)connection goes to the promoted replica. With `tls`
    (rediss+sentinel://) both the sentinels and the Redis servers are spoken to over TLS,
    with the same options (one CA, one client certificate)."""
    parsed = parse_sentinel(url)
    query = dict(parsed.query)
    to_sentinels: dict[str, Any] = {
        "socket_connect_timeout": 5.0,
        "protocol": 2,
        **driver_kwargs(),
    }
    if query.get("sentinel_password"):
        to_sentinels["password"] = query["sentinel_password"]
    if query.get("sentinel_username"):
        to_sentinels["username"] = query["sentinel_username"]
    sentinel = _Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs=to_sentinels
    )
    data_tls: dict[str, Any] = {}
    if tls is not None:
        _tls.context_for(tls)  # a missing or bad file: ConfigurationError now, not per retry
        # redis-py's Sentinel takes no connection class for the sentinels: give it clients
        # whose pools make our TLS connections (aiotask's SSLContext, not redis-py's ssl_*)
        sentinel.sentinels = [
            Redis.from_pool(  # the client owns (and closes) its pool
                ConnectionPool(
                    connection_class=FastPackSSLConnection,
                    host=host,
                    port=port,
                    tls=tls,
                    **to_sentinels,
                )
            )
            for host, port in parsed.sentinels
        ]
        data_tls["tls"] = tls
    client = sentinel.master_for(
        parsed.service,
        connection_class=FastPackSentinelSSLConnection if tls else FastPackSentinelConnection,
        **data_tls,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=None,
        socket_connect_timeout=5.0,
        client_name=name,
        **driver_kwargs(),
    )
    return client, sentinel


class SharedClient:
    """One redis-py client (one connection pool) for every user of the same server URL.

    A broker and a result backend on the same server (the default: `App(broker="redis://...")`)
    share one instance, so one pool serves both; the last `release()` closes it.
    """

    def __init__(self, url: str, tls: _tls.TLSOptions | None = None) -> None:
        self.url = url
        self.tls = tls
        #: CLIENT SETNAME of every connection: operators (and tests) can tell ours apart
        # os.urandom(n).hex() is secrets.token_hex(n), without importing hmac and hashlib
        self.name = f"aiotask-{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._client: Client | None = None
        self._sentinel: Sentinel | None = None
        self._users = 0

    def acquire(self) -> Client:
        if self._client is None:
            if self.url.lower().startswith(("redis+sentinel:", "rediss+sentinel:")):
                self._client, self._sentinel = _sentinel_client(self.url, self.name, self.tls)
            else:
                self._client = make_client(self.url, self.name, self.tls)
        self._users += 1
        return self._client

    async def release(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._client is not None:
            client, self._client = self._client, None
            sentinel, self._sentinel = self._sentinel, None
            await client.aclose()
            if sentinel is not None:
                await sentinel.aclose()


async def retrying(
    op: Callable[[], Awaitable[T]],
    url: str,
    deadline: float,
    *,
    what: str = "Redis",
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run `op`, retrying connection failures with one Backoff until `deadline` seconds passed.

    Auth errors and other error replies are raised at once, mapped by `map_errors`.
    """
    backoff = Backoff(deadline=deadline)
    while True:
        try:
            with map_errors(url, what):
                return await op()
        except BrokerConnectionError as exc:
            if not retryable(exc.__cause__):
                raise
            if not backoff.failing:
                logger.warning("%s at %s unreachable, retrying: %s", what, redact(url), exc)
                _hooks.reconnecting(what)
            if on_retry is not None:
                on_retry()
            if not await backoff.sleep():
                raise BrokerConnectionError(
                    f"{what} at {redact(url)} unreachable for {deadline:g}s "
                    f"(broker_unreachable_timeout): {exc.__cause__}"
                    f"{_tls.reset_hint(url, exc.__cause__)}"
                ) from exc.__cause__


async def warn_if_volatile(client: Client, url: str) -> None:
    """Warn once per server when it may lose queued messages (no AOF, or evicting keys)."""
    if redact(url) in _warned:
        return
    _warned.add(redact(url))
    if isinstance(client, RedisCluster):
        return  # CONFIG per node: see docs/redis-cluster.md for what each node needs
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("CONFIG", "GET", "appendonly")
    pipe.execute_command("CONFIG", "GET", "maxmemory-policy")
    try:
        results = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError):
        return
    if any(isinstance(r, Exception) for r in results):
        return  # CONFIG renamed or disabled (managed Redis): nothing to check
    appendonly, policy = (_text(r[1]) if len(r) == 2 else "" for r in results)
    if appendonly == "no":
        logger.warning(
            "Redis at %s has appendonly=no: a restart loses queued messages; "
            "set 'appendonly yes' (and appendfsync everysec) in redis.conf",
            redact(url),
        )
    if policy != "noeviction":
        logger.warning(
            "Redis at %s has maxmemory-policy=%s: it may evict queued messages; "
            "set 'maxmemory-policy noeviction'",
            redact(url),
            policy,
        )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def wait_replicas(cmds: list[Any], wanted: int, wait_ms: int) -> float:
    """`redis_wait_replicas`: end a pipeline with WAIT (same connection, so it covers exactly
    these writes); returns the seconds it may add."""
    if not wanted:
        return 0.0
    cmds.append(("WAIT", wanted, wait_ms))
    return wait_ms / 1000


def check_replicas(url: str, results: list[Any], wanted: int, wait_ms: int) -> None:
    """After a pipeline ended by wait_replicas(): raise when too few replicas had the writes."""
    got = results[-1] if wanted else 0
    if got < wanted:
        raise BrokerConnectionError(
            f"publish to {redact(url)}: only {got} of {wanted} replicas had it within "
            f"{wait_ms} ms (redis_wait_replicas): it is queued on the primary, but a failover "
            "now could lose it; check the replicas"
        )
