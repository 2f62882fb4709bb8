"""Redis Cluster: `redis+cluster://[user:password@]host1:port1,host2:port2/0`.

See docs/redis-cluster.md.

redis-py's RedisCluster follows the slot map (MOVED/ASK, failover, re-discovery); this module
builds one with aiotask's connection class, and gives the broker and backend the few things
a keyed client does not: a raw connection to the node that owns a key (blocking reads), one to
any primary (pub/sub, which a cluster forwards to every node), and keys grouped by slot (a
script or MULTI may only touch keys of one slot).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from aiotask._redis.conn import connection_class, driver_kwargs
from aiotask._urls import CLUSTER_SCHEMES
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio.connection import AbstractConnection

    from aiotask._tls import TLSOptions

#: URL schemes of a Redis Cluster (the `redis_cluster` setting turns redis:// into the first).
SCHEMES = CLUSTER_SCHEMES


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def single_node_url(url: str) -> str:
    """The URL with its scheme's `+cluster` removed (TLS and error texts reason per node)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.lower().removesuffix('+cluster')}{sep}{rest}"


def refuse_wait(url: str, wanted: int) -> None:
    """`redis_wait_replicas` is for a single primary (Sentinel): WAIT has no key, so a cluster
    pipeline cannot send it to the primary that took a queue's writes."""
    if wanted and is_cluster_url(url):
        raise ConfigurationError(
            "redis_wait_replicas is not supported on a Redis Cluster (redis+cluster://): "
            "WAIT covers one primary's connection, and a batch spans the primaries of its "
            "queues; set redis_wait_replicas = 0 (see docs/redis-cluster.md)"
        )


def startup_nodes(url: str) -> list[tuple[str, int]]:
    """The host:port list of a cluster URL; port 6379 when one is left out."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for item in filter(None, netloc.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon or not port.isdigit():
            host, port = item, "6379"
        nodes.append((host.strip("[]") or "127.0.0.1", int(port)))
    if not nodes:
        raise ConfigurationError("a redis+cluster:// URL needs at least one host:port")
    return nodes


def make_cluster_client(url: str, name: str | None, tls: TLSOptions | None) -> RedisCluster:
    """A RedisCluster over the URL's start-up nodes, with C command packing and our TLS.

    redis-py keeps its own cluster retries (they follow MOVED/ASK and re-read the slot map
    after a failover); aiotask's `retrying()` sits above them as for a single node.
    """
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    if db != "0":
        raise ConfigurationError(f"Redis Cluster has database 0 only, not {db!r}: end the URL /0")
    cls = connection_class("rediss:" if url.lower().startswith("rediss+") else "redis:")
    extra: dict[str, Any] = {"tls": tls} if tls is not None else {}
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in startup_nodes(url)],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        client_name=name,
        protocol=2,
        socket_timeout=None,
        socket_connect_timeout=5.0,
        # per node; redis-py's default of 100 raises "Too many connections" under a worker's
        # concurrency, and its cluster client answers a connection error by closing every
        # connection (all in-flight commands fail): no cap, as for a single node's pool
        max_connections=2**31,
        **driver_kwargs(),
    )
    # RedisCluster has no connection_class argument: set it where nodes are made from
    client.connection_kwargs.update(connection_class=cls, **extra)
    for node in client.startup_nodes:
        node.connection_class = cls
        node.connection_kwargs.update(extra)
    return client


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    return isinstance(client, RedisCluster)


def _connect(node: ClusterNode) -> AbstractConnection:
    kwargs = dict(node.connection_kwargs)
    return node.connection_class(**kwargs)


async def connection_for_key(client: RedisCluster, key: str) -> AbstractConnection:
    """A new, unpooled connection to the primary that owns `key` (for a blocking read)."""
    await client.initialize()
    node = client.get_node_from_key(key)
    if node is None:
        raise RedisClusterException(f"no node serves the slot of {key!r} now")
    return _connect(node)


def connection_to_any(client: RedisCluster) -> AbstractConnection:
    """A new connection to a random primary: classic PUBLISH reaches every node of a cluster."""
    primaries = client.get_primaries() or client.get_nodes()
    return _connect(random.choice(primaries))


def by_slot(keys: Iterable[str]) -> dict[int, list[int]]:
    """Indexes of `keys`, grouped by hash slot, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(i)
    return groups
