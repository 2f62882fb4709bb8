"""Shared fixtures: service detection (skip, or fail when services are required), namespaces,
and the end-of-session leak check (nothing a test created may stay on the shared servers).

The servers the tests use are set by AIOTASK_TEST_REDIS_URL (default redis://127.0.0.1:6379/0:
database 0) and AIOTASK_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/: vhost "/");
see the Testing section of README.md.
"""

from __future__ import annotations

import asyncio
import compileall
import inspect
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests import leaks, schedule
from tests.sync_support import close_leftover_loop

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

REQUIRE_SERVICES = os.environ.get("AIOTASK_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("AIOTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("AIOTASK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "AIOTASK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: every namespace handed out in this session -> the test that got it: the leak check looks
#: for exactly these, and names the test
NAMESPACES: dict[str, str] = {}
#: tests (node ids) that asked for the shared Redis / RabbitMQ: their namespace is cleaned there
USED_REDIS: set[str] = set()
USED_AMQP: set[str] = set()
USED_POSTGRES: set[str] = set()


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


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


def pytest_configure(config: pytest.Config) -> None:
    """Write aiotask's bytecode cache once, before any test starts a Python process.

    Hundreds of tests start `aiotask` processes (workers, CLI commands, beats). Where
    PYTHONDONTWRITEBYTECODE is set (as on these machines and in many CI images) no process
    writes __pycache__, so each one compiled every aiotask module again: about a third of the
    CPU time of starting an `aiotask` command. The flag stops writing, not reading: compiled
    here once, every process loads the cache (a stale entry is recompiled, as usual).
    """
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    root = Path(__file__).resolve().parent.parent
    for package in ("aiotask", "tests"):
        compileall.compile_dir(root / package, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest files first (tests/schedule.py): `--dist loadfile` then ends on short files."""
    schedule.slowest_first(items, schedule.load())


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique prefix for keys, queues and files, so tests never see each other's messages.

    Afterwards (after every fixture that uses it, such as brokers and workers) it deletes the
    test's keys on the shared Redis and its default queues on the shared RabbitMQ, for tests
    that used them; the session's leak check reports anything else left. The clean-up runs
    on an event loop of its own, in a thread: a sync fixture, so it never shares (or closes)
    the loop of an async test, and sync tests may run their own loops.
    """
    name = f"t{uuid.uuid4().hex[:12]}"
    node = request.node.nodeid
    NAMESPACES[name] = node
    yield name
    if node in USED_REDIS:
        _aside(leaks.clean_redis(REDIS_URL, name))
    if node in USED_AMQP:
        _aside(leaks.clean_amqp(AMQP_URL, name))
    if node in USED_POSTGRES:
        _aside(leaks.clean_postgres(POSTGRES_URL, name))


@pytest.fixture(scope="module")
def module_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """`namespace` for a module's shared processes (workers started once for several tests).

    The tests of a module that share it must keep apart by other names (queues, task names,
    keys). Afterwards it is cleaned on every shared server that answers: a module fixture
    cannot ask for the function-scoped redis_url / amqp_url / postgres_url fixtures.
    """
    name = f"t{uuid.uuid4().hex[:12]}"
    NAMESPACES[name] = request.node.nodeid
    yield name
    if _answers(*_host_port(REDIS_URL, 6379)):
        _aside(leaks.clean_redis(REDIS_URL, name))
    if _answers(*_host_port(AMQP_URL, 5672)):
        _aside(leaks.clean_amqp(AMQP_URL, name))
    if _answers(*_host_port(POSTGRES_URL, 5432)):
        _aside(leaks.clean_postgres(POSTGRES_URL, name))


@pytest.fixture(autouse=True)
def _no_idle_event_loop(request: pytest.FixtureRequest) -> None:
    """Before a sync test: close the idle loop pytest-asyncio leaves current after an async one.

    pytest-asyncio ends each async test by installing a fresh, unclosed loop as the thread's
    current one. A sync test that then calls `asyncio.run()` replaces it, and the orphan warns
    "unclosed event loop" when collected, failing whatever test runs then (filterwarnings is
    error): it depended on the order of tests, which xdist changes. Tests that use pytest-asyncio's
    loop (async fixtures pull in `event_loop`) keep it.
    """
    if inspect.iscoroutinefunction(request.function) or "event_loop" in request.fixturenames:
        return
    close_leftover_loop()


def _aside(work: Coroutine[Any, Any, object]) -> None:
    """Run a coroutine to the end on a fresh loop in another thread."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """After the last test: no key or queue named after this session's namespaces remains."""
    yield
    if not NAMESPACES:
        return
    names = set(NAMESPACES)
    found: list[str] = []
    if _answers(*_host_port(REDIS_URL, 6379)):
        found += [f"Redis key {k}" for k in leaks.redis_keys(REDIS_URL, names)]
    if _answers(*_host_port(AMQP_URL, 5672)):
        found += [f"RabbitMQ queue {q}" for q in leaks.amqp_queues(AMQP_URL, names)]
    if USED_POSTGRES and _answers(*_host_port(POSTGRES_URL, 5432)):
        found += [f"PostgreSQL {s}" for s in leaks.postgres_schemas(POSTGRES_URL, names)]
    if found:
        pytest.fail(leaks.report(found, NAMESPACES), pytrace=False)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    need_service("Redis", *_host_port(REDIS_URL, 6379))
    USED_REDIS.add(request.node.nodeid)
    return REDIS_URL


@pytest.fixture
def amqp_url(request: pytest.FixtureRequest) -> str:
    need_service("RabbitMQ", *_host_port(AMQP_URL, 5672))
    USED_AMQP.add(request.node.nodeid)
    return AMQP_URL


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """The shared PostgreSQL; each test's tables live in the schema named by its namespace
    (the key_prefix), dropped afterwards by the `namespace` fixture."""
    need_service("PostgreSQL", *_host_port(POSTGRES_URL, 5432))
    USED_POSTGRES.add(request.node.nodeid)
    return POSTGRES_URL


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{os.fspath(tmp_path)}/aiotask.db"


@pytest.fixture(scope="session")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Sentinel set (1 primary, 1 replica, 3 sentinels) shared by a session's tests;
    its keys go with it. Tests that kill servers start their own (tests/sentinel_server.py)."""
    from tests.sentinel_server import PrivateSentinelSet

    if not PrivateSentinelSet.available():
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    servers = PrivateSentinelSet(tmp_path_factory.mktemp("sentinel"))
    servers.start()
    try:
        yield servers.url
    finally:
        servers.stop()
