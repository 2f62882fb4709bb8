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
    else:
        url = request.getfixturevalue("sqlite_url")
    backend = backend_from_url(url, contract_settings(url, namespace))
    await backend.connect()
    return backend


BROKERS = ["memory"]
BACKENDS = ["memory"]


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Broker]:
    b = await make_broker(request.param, request, namespace)
    try:
        yield b
    finally:
        for queue in ("q", "q2", "qa", "qb"):
            await b.purge(queue)
        await b.close()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[ResultBackend]:
    b = await make_backend(request.param, request, namespace)
    try:
        yield b
    finally:
        await b.close()
