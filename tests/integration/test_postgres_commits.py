"""Which PostgreSQL commits wait for the WAL flush (docs/postgres.md, "Reliability").

A worker's result store commits without waiting only when it comes before the ack of its
message on the same server: the WAL then makes the result durable before the ack. Every other
store (a producer's, or a worker's whose broker is another server) waits for the flush. The
crash itself is in tests/faults/test_postgres_faults.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App
from aiotask._postgres import same_server
from aiotask.backends import _postgres_results
from aiotask.backends.base import BEFORE_ACK
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("postgresql://u@db:5432/app", "postgresql://v:pw@db/other", True),  # any database
        ("postgresql://u@db:5433/app", "postgresql://u@db:5432/app", False),
        ("postgresql://u@db/app", "postgres://u@db2/app", False),
        ("postgresql://u@db/app", "redis://db:5432/0", False),  # a broker on another kind
        ("postgresql:///app?host=/run/pg", "postgresql:///app?host=/run/pg", False),  # unsure
        ("postgresql://u@db:x/app", "postgresql://u@db:x/app", False),  # a bad port
    ],
)
def test_same_server(a: str, b: str, same: bool) -> None:
    assert same_server(a, b) is same


@pytest.fixture
def durable_flags(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The `durable` argument of every result upsert, in order."""
    seen: list[bool] = []
    real: Callable[..., Awaitable[None]] = _postgres_results.upsert

    async def upsert(*args: Any, durable: bool) -> None:
        seen.append(durable)
        await real(*args, durable=durable)

    monkeypatch.setattr(_postgres_results, "upsert", upsert)
    return seen


async def test_only_a_worker_store_before_its_ack_on_the_broker_server_skips_the_flush(
    postgres_url: str, namespace: str, durable_flags: list[bool]
) -> None:
    app = App("commits", broker=postgres_url, key_prefix=namespace)

    @app.task(name="commits.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        await app.revoke(["never-sent"])  # a producer's store: waits for the flush
        assert durable_flags == [True]
        async with start_worker(app):
            assert await (await add.send(1, 2)).get(timeout=10) == 3
        assert durable_flags[1:] == [False]  # the worker's, before its ack


async def test_a_store_waits_for_the_flush_when_the_broker_is_another_server(
    postgres_url: str, redis_url: str, namespace: str, durable_flags: list[bool]
) -> None:
    app = App("commits", broker=redis_url, backend=postgres_url, key_prefix=namespace)
    async with app:
        token = BEFORE_ACK.set(True)  # as in a worker's settle: the ack goes to Redis
        try:
            await app.revoke(["x"])
        finally:
            BEFORE_ACK.reset(token)
    assert durable_flags == [True]


async def test_a_publish_whose_reply_was_lost_is_retried_without_duplicates(
    postgres_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt is a plain INSERT (its keys are new); the retry after a lost reply
    uses the same keys with ON CONFLICT DO NOTHING, so the committed rows are not doubled."""
    from aiotask.brokers import _postgres_sql

    real = _postgres_sql.insert
    calls: list[bool] = []

    async def insert(*args: Any, again: bool) -> None:
        calls.append(again)
        await real(*args, again=again)
        if len(calls) == 1:
            raise ConnectionResetError("the reply was lost")  # committed all the same

    monkeypatch.setattr(_postgres_sql, "insert", insert)
    app = App("commits", broker=postgres_url, key_prefix=namespace)

    @app.task(name="commits.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        await add.send_batch([(1, 2), (3, 4)])
        assert calls == [False, True]
        stats = await app.broker.queue_stats(["default"])
    assert stats[0].ready == 2
