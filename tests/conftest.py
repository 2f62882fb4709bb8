"""Shared fixtures: service detection (skip, or fail when services are required) and namespaces."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

REQUIRE_SERVICES = os.environ.get("AIOTASK_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("AIOTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("AIOTASK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip when a server is absent, or fail when CI said every service must be there."""
    if _answers(host, port):
        return
    message = f"{name} is not answering on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and AIOTASK_REQUIRE_SERVICES=1: start it (see DEVELOPERS notes)")
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture
def namespace() -> str:
    """A unique prefix for keys, queues and files, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url() -> str:
    need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    need_service("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{os.fspath(tmp_path)}/aiotask.db"
