"""PostgreSQL through a real PgBouncer in transaction mode (a private pgbouncer in front of the
machine's PostgreSQL, four server connections shared by every client).

With `?listen=false&statement_cache_size=0` (the documented set-up for transaction pooling on
PgBouncer < 1.21) a worker process runs tasks, a chord, unique sends and a concurrency limit.
With LISTEN left on, the first LISTEN connection's test notification never arrives: that is
detected, logged with the fix, and waits poll instead of sleeping through lost notifications.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from typing import TYPE_CHECKING

import pytest

from aiotask import App, chord, signature
from aiotask.backends import EncodedResult, ResultRecord
from aiotask.backends import from_url as backend_from_url
from aiotask.backends.postgres import PostgresBackend
from aiotask.settings import Settings
from tests.conftest import REQUIRE_SERVICES
from tests.procs import TASKS_MODULE, start_worker, stop, worker_env
from tests.servers import PrivatePgBouncer, pgbouncer_bin

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

#: The URL options transaction pooling needs (Debian's PgBouncer is older than 1.21).
POOLED = "?listen=false&statement_cache_size=0"

EXTRA_TASKS = textwrap.dedent(
    """
    @app.task(name="proc.limited", concurrency_limit=2)
    async def limited(i: int) -> int:
        _mark("enter", str(time.time()))
        await asyncio.sleep(0.2)
        _mark("leave", str(time.time()))
        return i

    @app.task(name="proc.total")
    async def total(values: list[int], extra: int) -> int:
        return sum(values) + extra

    @app.task(name="proc.once", unique=True)
    async def once(key: str) -> str:
        _mark("once", key)
        return key
    """
)


@pytest.fixture
def pgbouncer(postgres_url: str) -> Iterator[PrivatePgBouncer]:
    if pgbouncer_bin() is None:
        message = "pgbouncer is not installed: apt-get install pgbouncer (make test does)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    server = PrivatePgBouncer(postgres_url, pool_mode="transaction", pool_size=4)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _write_tasks(directory: Path) -> Path:
    (directory / "proc_tasks.py").write_text(TASKS_MODULE + EXTRA_TASKS)
    (directory / "logs").mkdir(exist_ok=True)
    return directory


def _lines(directory: Path, kind: str) -> list[str]:
    path = directory / "logs" / kind
    return path.read_text().split() if path.exists() else []


async def test_a_worker_runs_through_transaction_pooling(
    tmp_path: Path, pgbouncer: PrivatePgBouncer, namespace: str
) -> None:
    url = pgbouncer.url + POOLED
    env = worker_env(_write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace)
    worker = None
    try:
        async with App("proc", broker=url, key_prefix=namespace) as app:
            # the lock store: 50 concurrent unique sends while no worker runs (a finished
            # task frees its key: with a worker, later sends could rightly queue it again)
            ids = {
                r.id
                for r in await asyncio.gather(
                    *(app.send_task("proc.once", args=["k"], unique=True) for _ in range(50))
                )
            }
            assert len(ids) == 1
            worker = start_worker(tmp_path, env, "-c", "8")
            assert await app.AsyncResult(ids.pop()).get(timeout=30) == "k"
            sent = [await app.send_task("proc.add", args=[i, i]) for i in range(40)]
            assert [await r.get(timeout=30) for r in sent] == [2 * i for i in range(40)]
            header = [signature("proc.add", (i, 1), app=app) for i in range(5)]
            result = await chord(header, signature("proc.total", (100,), app=app)).send()
            assert await result.get(timeout=30) == sum(i + 1 for i in range(5)) + 100
            # the coordination store: never more than 2 at once, on a worker with 8 slots
            held = [await app.send_task("proc.limited", args=[i]) for i in range(6)]
            assert sorted([await r.get(timeout=30) for r in held]) == list(range(6))
    finally:
        if worker is not None:
            assert stop(worker) == 0, pgbouncer.log()
    assert _lines(tmp_path, "once") == ["k"]
    # a leave at t closes before an enter at t opens
    events = sorted(
        [(float(t), 1) for t in _lines(tmp_path, "enter")]
        + [(float(t), -1) for t in _lines(tmp_path, "leave")]
    )
    assert len(events) == 12
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2  # the limit held, and was reached (8 worker slots, 6 tasks)


async def test_listen_through_transaction_pooling_is_detected_and_waits_poll(
    pgbouncer: PrivatePgBouncer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = pgbouncer.url + "?statement_cache_size=0"  # LISTEN left on: the mistake
    backend = backend_from_url(url, Settings(broker_url=url, key_prefix=namespace))
    assert isinstance(backend, PostgresBackend)
    await backend.connect()
    try:
        with caplog.at_level(logging.WARNING, logger="aiotask._postgres"):
            waiting = asyncio.create_task(backend.wait("t1", timeout=15))
            await asyncio.sleep(0.5)
            record = ResultRecord("t1", "SUCCESS", 42, task="t.x")
            await backend.store([EncodedResult.of(record, 60)])
            # a lost NOTIFY would leave the watcher asleep for IDLE_MAX (30 s): it polls
            assert (await waiting).result == 42
        assert backend._db.listen_broken
        assert "PgBouncer in transaction" in caplog.text
        assert "listen=false" in caplog.text
    finally:
        await backend.close()


async def test_the_listen_check_passes_on_a_direct_connection(
    postgres_url: str, namespace: str
) -> None:
    backend = backend_from_url(
        postgres_url, Settings(broker_url=postgres_url, key_prefix=namespace)
    )
    assert isinstance(backend, PostgresBackend)
    await backend.connect()
    try:
        assert await backend._db.listening()
        assert not backend._db.listen_broken
    finally:
        await backend.close()
