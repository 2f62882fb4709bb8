"""Which PostgreSQL commits wait for the WAL flush (docs/postgres.md, "Reliability"), and a
wait whose notification never comes.

Claims, acks, nacks, lease renewals and heartbeats commit without waiting: losing one in a
server crash means a redelivery. Every other write waits, a worker's result store and chord
reports included: the ack that follows may run on the restarted server, which must not have
lost them (the crash itself is in tests/faults/test_postgres_faults.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from aiotask import App, _postgres
from aiotask._time import now
from aiotask.backends import _postgres_results
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.backends.postgres import PostgresBackend
from aiotask.brokers import Outgoing
from aiotask.settings import Settings
from aiotask.states import SUCCESS
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.postgres

_QUERIES = frozenset({"execute", "fetch", "fetchrow", "fetchval"})


class _Recorder:
    """A pooled connection that notes the SQL of each statement it runs."""

    def __init__(self, conn: Any, what: str, seen: list[tuple[str, str]]) -> None:
        self._conn, self._what, self._seen = conn, what, seen

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in _QUERIES:
            return attr

        async def query(sql: str, *args: Any, **kwargs: Any) -> Any:
            self._seen.append((self._what, sql))
            return await attr(sql, *args, **kwargs)

        return query


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(what, SQL) of every statement run through aiotask._postgres.Database.run."""
    seen: list[tuple[str, str]] = []
    real = _postgres.Database.run

    async def run(self: _postgres.Database, fn: Callable[[Any], Awaitable[Any]], what: str) -> Any:
        return await real(self, lambda conn: fn(_Recorder(conn, what, seen)), what)

    monkeypatch.setattr(_postgres.Database, "run", run)
    return seen


async def test_a_worker_skips_the_flush_for_claims_and_acks_only(
    postgres_url: str, namespace: str, statements: list[tuple[str, str]]
) -> None:
    app = App("commits", broker=postgres_url, key_prefix=namespace)

    @app.task(name="commits.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        async with start_worker(app):
            assert await (await add.send(1, 2)).get(timeout=10) == 3
        # the ack follows the result off the waiter's path: wait for it
        for _ in range(200):
            if any(what == "ack" for what, _ in statements):
                break
            await asyncio.sleep(0.05)

    def skips(what: str) -> set[bool]:
        return {"synchronous_commit" in sql for w, sql in statements if w == what}

    # the claims run in functions of the schema, which skip the flush (the test below)
    assert {".claim(" in sql for what, sql in statements if what == "claim messages"} == {True}
    assert skips("ack") == {True}
    assert skips("heartbeat") <= {True}
    assert skips("publish") == {False}
    assert skips("store results") == {False}  # a worker's result, before its ack


async def test_the_claim_functions_skip_the_flush_until_their_commit(
    postgres_url: str, namespace: str
) -> None:
    """The claims run in functions (aiotask/_postgres/claims.py) whose SET clauses are undone
    when they return; the synchronous_commit = off they set for their transaction is not: it
    holds until the claim's commit, and not after it."""
    from aiotask._postgres import fair
    from aiotask.brokers.postgres import PostgresBroker

    broker = PostgresBroker(postgres_url, Settings(key_prefix=namespace))
    await broker.connect()
    await broker.publish([Outgoing("q", b"x", "plain"), Outgoing("q", b"x", "k", fair_key="k")])
    conn = await asyncpg.connect(postgres_url)
    try:
        before = await conn.fetchval("SHOW synchronous_commit")
        assert before != "off"
        slots = fair.slot_names(fair.cursor_name(["q"]))
        for sql, extra in ((broker._sql.claim, ()), (broker._sql.claim_fair, (slots,))):
            async with conn.transaction():
                rows = await conn.fetch(sql, ["q"], now(), 10, now() + 60, "me", 10, *extra)
                assert rows
                assert await conn.fetchval("SHOW synchronous_commit") == "off"
                assert await conn.fetchval("SHOW plan_cache_mode") == "auto"  # undone on return
            assert await conn.fetchval("SHOW synchronous_commit") == before
    finally:
        await conn.close()
        await broker.close()


async def test_a_wait_looks_again_when_no_notification_comes(
    postgres_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result stored without its NOTIFY (lost) is found after IDLE_MAX, not never."""
    monkeypatch.setattr(_postgres, "IDLE_MAX", 0.2)
    app = App("commits", broker=postgres_url, key_prefix=namespace)
    async with app:
        backend = app.backend
        assert isinstance(backend, PostgresBackend)
        looked = asyncio.Event()
        resolve = backend._resolve

        async def first_look(ids: list[str]) -> bool:
            try:
                return await resolve(ids)
            finally:
                looked.set()

        monkeypatch.setattr(backend, "_resolve", first_look)
        waiting = asyncio.ensure_future(app.AsyncResult("quiet").get(timeout=10))
        await asyncio.wait_for(looked.wait(), 10)  # it looked once, found nothing, and sleeps
        stored = EncodedResult.of(ResultRecord("quiet", SUCCESS, 5), 60)
        rows = ([stored.task_id], [stored.state], [True], [stored.data], [now() + 60])
        await backend._db.run(
            lambda c: _postgres_results.upsert(c, backend._s, rows, now(), ""), "store quietly"
        )
        assert await waiting == 5


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
