"""A private Redis Cluster per test module (6 nodes: 3 primaries, 3 replicas), and the contract
fixtures (`broker`, `more_brokers`, `backend`) over it, so tests/contract's suites run here too.

Only modules under tests/cluster start a cluster. The default test run keeps the short form (one
worker process over two shards, about 10 s); `make cluster` sets AIOTASK_CLUSTER_TESTS=full and
runs everything here: the contract and canvas suites and the failover tests (a few minutes).
test_rabbitmq_cluster_failover.py starts a private 3-node RabbitMQ cluster (about 50 s here), so
it runs only in `make cluster`; its short form is tests/integration/test_rabbitmq_quorum.py
(quorum queues and node lists on the shared server).
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import pytest

from tests.contract.conftest import TEST_QUEUES, MoreBrokers, make_backend, make_broker
from tests.servers import PrivateRedisCluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from aiotask.backends import ResultBackend
    from aiotask.brokers import Broker


#: The test of the short form (default `make test`, CI); the rest needs AIOTASK_CLUSTER_TESTS=full.
SHORT = {"test_worker_process_drains_queues_on_two_shards"}


def _other_server(item: pytest.Item) -> bool:
    """A contract test re-exported here but parametrized over other servers (memory, sqlite):
    tests/contract runs those; here only its redis case runs, on the cluster."""
    params = getattr(item, "callspec", None)
    if params is None:
        return False
    return any(params.params.get(name, "redis") != "redis" for name in ("broker", "backend"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    others = [i for i in items if "tests/cluster/" in i.nodeid and _other_server(i)]
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = [i for i in items if i not in others]
    if os.environ.get("AIOTASK_CLUSTER_TESTS") == "full":
        return
    skip = pytest.mark.skip(
        reason="cluster suite (Redis Cluster, RabbitMQ cluster): run `make cluster`"
    )
    for item in items:
        if "tests/cluster/" in item.nodeid and item.name not in SHORT:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a private Redis Cluster")
    directory: Path = tmp_path_factory.mktemp("rcluster")
    cluster = PrivateRedisCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_url(redis_cluster: PrivateRedisCluster) -> str:
    """The cluster's URL where the contract factories ask for a Redis URL."""
    return redis_cluster.url


async def delete_cluster_prefix(url: str, prefix: str) -> None:
    """Remove every key under `prefix:` on every primary (a SCAN of every primary, then UNLINK)."""
    from aiotask._redis.client import make_client
    from aiotask._redis.cluster import is_cluster

    client = make_client(url)
    assert is_cluster(client)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for key in keys:  # every primary's keys: the cluster scan visits each node
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture(params=["redis"])
async def broker(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Broker]:
    b = await make_broker(request.param, request, namespace)
    try:
        yield b
    finally:
        for queue in TEST_QUEUES:
            await b.purge(queue)
        await b.close()
        await delete_cluster_prefix(request.getfixturevalue("redis_url"), namespace)


@pytest.fixture
async def more_brokers(
    request: pytest.FixtureRequest, namespace: str, broker: Broker
) -> AsyncIterator[MoreBrokers]:
    more = MoreBrokers("redis", request, namespace, broker)
    try:
        yield more
    finally:
        await more.close_all()


@pytest.fixture(params=["redis"])
async def backend(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[ResultBackend]:
    b = await make_backend(request.param, request, namespace)
    try:
        yield b
    finally:
        await b.close()
        await delete_cluster_prefix(request.getfixturevalue("redis_url"), namespace)
