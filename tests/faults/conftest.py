"""Fixtures of the fault tests: servers of their own, which the tests may kill and restart."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.rabbit_server import PrivateRabbit, need_rabbitmq_server
from tests.servers import PrivatePostgres, PrivateRedis, pg_bin

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server that acknowledges a write only once it is on disk (append-only,
    fsync always): a kill -9 of it loses nothing stored. Stopped by PID afterwards."""
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    data = tmp_path / "redis"
    data.mkdir()
    server = PrivateRedis(data, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _private_postgres() -> Iterator[PrivatePostgres]:
    if pg_bin("initdb") is None or pg_bin("postgres") is None:
        if REQUIRE_SERVICES:
            pytest.fail(
                "PostgreSQL server binaries are not installed and AIOTASK_REQUIRE_SERVICES=1"
            )
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed")
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_server() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster (initdb in a temp dir, own port); removed afterwards."""
    yield from _private_postgres()


@pytest.fixture(scope="module")
def module_postgres_server() -> Iterator[PrivatePostgres]:
    """`postgres_server` shared by a module's tests, each in the schema of its namespace: its
    copy, start and removal cost more than some of the tests. A module that uses it puts the
    server back as the next test expects it (running, default settings) after each test."""
    yield from _private_postgres()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PrivateRabbit]:
    """A private RabbitMQ node (its own ports and data dir), killed by PID afterwards."""
    need_rabbitmq_server()
    base = tmp_path / "rabbit"
    base.mkdir()
    server = PrivateRabbit(base)
    server.start()
    try:
        yield server
    finally:
        server.kill()
