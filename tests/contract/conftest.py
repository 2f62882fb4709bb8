"""The broker and backend contract suites run over every implementation through these fixtures.

To add an implementation, add a `make_*` factory and its name to BROKERS / BACKENDS.
Each factory returns a connected instance using `namespace` for isolation and a cleanup.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from aiotask.backends import ResultBackend
from aiotask.backends import from_url as backend_from_url
from aiotask.brokers import Broker
from aiotask.brokers import from_url as broker_from_url
from aiotask.settings import Settings

#: Short leases so redelivery tests take about a second.
LEASE = 1.0
MAX_DELIVERIES = 3

Cleanup = Callable[[], Awaitable[None]]


#: Queues the broker contract tests use; the fixture empties (AMQP: deletes) them afterwards.
TEST_QUEUES = ("q", "q2", "qa", "qb")


async def delete_amqp_queues(b: Broker) -> None:
    """Delete this test's queues (its unique prefix only), so the shared server stays clean."""
    from aiotask.brokers.rabbitmq import RabbitMQBroker

    assert isinstance(b, RabbitMQBroker)
    for queue in TEST_QUEUES:
        await b.delete_queue(queue)


async def _nothing() -> None:
    return None


def contract_settings(url: str, namespace: str) -> Settings:
    return Settings(
        broker_url=url,
        key_prefix=namespace,
        visibility_timeout=LEASE,
        max_deliveries=MAX_DELIVERIES,
    )


async def make_broker(kind: str, request: pytest.FixtureRequest, namespace: str) -> Broker:
    if kind == "memory":
        url = "memory://"
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("amqp_url")
    broker = broker_from_url(url, contract_settings(url, namespace), f"app-{namespace}")
    await broker.connect()
    return broker


async def make_backend(kind: str, request: pytest.FixtureRequest, namespace: str) -> ResultBackend:
    if kind == "memory":
        url = "memory://"
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("sqlite_url")
    backend = backend_from_url(url, contract_settings(url, namespace))
    await backend.connect()
    return backend


BROKERS = ["memory", "sqlite", "redis", "amqp", "postgres"]
BACKENDS = ["memory", "sqlite", "redis", "postgres"]


async def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key under `prefix:` (SCAN + UNLINK; never FLUSH a shared server)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        batch = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Broker]:
    b = await make_broker(request.param, request, namespace)
    try:
        yield b
    finally:
        for queue in TEST_QUEUES:
            await b.purge(queue)
        if request.param == "amqp":
            await delete_amqp_queues(b)
        await b.close()
        if request.param == "redis":
            await delete_prefix(request.getfixturevalue("redis_url"), namespace)


class MoreBrokers:
    """More consumers of the same kind and namespace as `broker`: a fresh process, in effect.

    memory:// has no shared server, so "another instance" is the same in-process broker,
    reopened after close() (which hands its unsettled messages back, as a server would).
    """

    def __init__(self, kind: str, request: pytest.FixtureRequest, namespace: str, shared: Broker):
        self._kind, self._request, self._namespace, self._shared = kind, request, namespace, shared
        self._open: list[Broker] = []

    async def new(self) -> Broker:
        if self._kind == "memory":
            await self._shared.connect()
            return self._shared
        b = await make_broker(self._kind, self._request, self._namespace)
        self._open.append(b)
        return b

    async def close(self, b: Broker) -> None:
        """The consumer goes away without settling what it holds."""
        if b in self._open:
            self._open.remove(b)
        await b.close()

    async def close_all(self) -> None:
        for b in list(self._open):
            await self.close(b)


@pytest.fixture
async def more_brokers(
    request: pytest.FixtureRequest, namespace: str, broker: Broker
) -> AsyncIterator[MoreBrokers]:
    kind = request.node.callspec.params["broker"]
    more = MoreBrokers(kind, request, namespace, broker)
    try:
        yield more
    finally:
        await more.close_all()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[ResultBackend]:
    b = await make_backend(request.param, request, namespace)
    try:
        yield b
    finally:
        await b.close()
        if request.param == "redis":
            await delete_prefix(request.getfixturevalue("redis_url"), namespace)
