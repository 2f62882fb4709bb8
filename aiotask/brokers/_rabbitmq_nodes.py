"""Several RabbitMQ nodes behind one broker URL: connect to the first that answers, and after a
lost connection reconnect to the next one (round robin), for a RabbitMQ cluster.

    amqp://user:pass@h1:5672,h2:5672,h3:5672/vhost?heartbeat=10   (one userinfo, vhost, query)
    amqp://user:pass@h1:5672/vhost;amqp://user:pass@h2:5673/vhost (kombu's form: full URLs)

aio-pika's robust connection reconnects to one URL. `NodesConnection` keeps its reconnect
loop, channel restore and callbacks, and only changes the address before each attempt. The
hook is aio-pika's private `RobustConnection.__connect_transport` (one attempt); a unit test
fails if a new aio-pika renames it. A single-node URL uses aio-pika's class (with
_rabbitmq_reader's transport, as every aiotask connection).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

from aio_pika.connection import make_url
from yarl import URL

from aiotask._urls import redact
from aiotask.brokers._rabbitmq_reader import RobustTransport, install
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aio_pika.abc import AbstractRobustConnection

log = logging.getLogger("aiotask.brokers.rabbitmq")
#: Closes of abandoned attempts still running after their caller was cancelled (kept referenced).
_background: set[asyncio.Future[None]] = set()

#: how long a cancelled connection attempt may finish, so that what it opened is closed
CANCEL_GRACE = 2.0
#: `;` before another scheme separates full URLs (a `;` inside a query stays).
_NEXT_URL = re.compile(r";\s*(?=[a-zA-Z][a-zA-Z0-9+.-]*://)")
#: The private method of aio-pika's RobustConnection that makes one connection attempt.
HOOK = "_RobustConnection__connect_transport"


def node_urls(url: str) -> list[str]:
    """One URL per node, in the order given; userinfo, path and query shared by a host list."""
    out: list[str] = []
    for part in _NEXT_URL.split(url.strip()):
        scheme, sep, rest = part.strip().partition("://")
        if not sep:
            raise ConfigurationError(f"bad broker URL {redact(url)!r}: expected amqp://...")
        end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0] or [len(rest)])
        authority, tail = rest[:end], rest[end:]
        userinfo, at, hosts = authority.rpartition("@")
        for host in hosts.split(","):
            if not host.strip():
                raise ConfigurationError(
                    f"bad broker URL {redact(url)!r}: an empty host in the node list "
                    "(use amqp://user:pass@host1:port1,host2:port2/vhost)"
                )
            out.append(f"{scheme}://{userinfo}{at}{host.strip()}{tail}")
    return out


class NodesConnection(RobustTransport):
    """A robust connection that moves to the next node at every reconnect attempt."""

    nodes: ClassVar[Sequence[str]] = ()
    start: ClassVar[int] = 0

    def __init__(self, url: URL, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.node_index = self.start
        self._attempts = 0

    @classmethod
    def over(cls, nodes: Sequence[str], start: int) -> type[NodesConnection]:
        """A subclass bound to these nodes (aio-pika instantiates the class it is given)."""
        return type("NodesConnection", (cls,), {"nodes": tuple(nodes), "start": start})

    @property
    def node(self) -> str:
        return self.nodes[self.node_index]

    async def _attempt(self) -> None:
        if self._attempts:  # the node we were on is gone (or never answered): the next one
            self.node_index = (self.node_index + 1) % len(self.nodes)
            log.info("RabbitMQ: connecting to the next node, %s", redact(self.node))
        self._attempts += 1
        self.url = URL(self.node)
        await getattr(super(), HOOK)()


# aio-pika calls the attempt through its name-mangled attribute; bind ours to that name.
setattr(NodesConnection, HOOK, NodesConnection._attempt)


async def connect_node(
    nodes: Sequence[str], start: int, *, timeout: float, **kwargs: Any
) -> AbstractRobustConnection:
    """One connection attempt to `nodes[start]`; later reconnects go round the other nodes.

    A single node is aio-pika's own robust connection, several a NodesConnection; both read
    frames with _rabbitmq_reader's buffered receiver. An attempt that fails or is cancelled (a
    worker told to stop while it connects) closes its connection object: otherwise aio-pika's
    reconnect task, which survives cancellation until its connection is closed, keeps
    reconnecting and the process never exits.
    """
    install()
    interval = kwargs.pop("reconnect_interval", None)
    url = make_url(nodes[start], reconnect_interval=interval)
    conn: AbstractRobustConnection
    if len(nodes) == 1:
        conn = RobustTransport(url, reconnect_interval=interval, **kwargs)
    else:
        conn = NodesConnection.over(nodes, start)(url, reconnect_interval=interval, **kwargs)
    attempt = asyncio.ensure_future(conn.connect(timeout=timeout))
    try:
        await asyncio.shield(attempt)
    except BaseException:
        await _abandon(attempt, conn)
        raise
    return conn


async def _abandon(attempt: asyncio.Future[None], conn: AbstractRobustConnection) -> None:
    """End a failed or cancelled attempt and close `conn`, even if cancelled again meanwhile.

    Cancelled midway, aiormq may hold a half-made connection (socket, reader and writer tasks)
    that closing `conn` does not reach: the attempt ends first (briefly: a worker told to stop
    must not wait out a connect timeout), then what it made is closed. A second cancel (a
    worker stopped twice) only cuts the wait short: the close still runs to its end, in the
    background if need be.
    """
    try:
        if not attempt.done():
            await asyncio.wait([attempt], timeout=CANCEL_GRACE)
    finally:
        attempt.cancel()
        await asyncio.shield(_closing(conn))


def _closing(conn: AbstractRobustConnection) -> asyncio.Future[None]:
    closing = asyncio.ensure_future(conn.close())
    _background.add(closing)
    closing.add_done_callback(_closed)
    return closing


def _closed(closing: asyncio.Future[None]) -> None:
    _background.discard(closing)
    if not closing.cancelled() and closing.exception() is not None:
        log.debug("closing an abandoned RabbitMQ connection failed: %r", closing.exception())
