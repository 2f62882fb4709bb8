"""SQLite calls on the message path run inline when the connection is idle (`run_quick`).

Each hop to the connection's thread wakes two sleeping threads; these tests pin down that an
idle connection makes none on the message path, that a held write lock still sends the call
to the thread (never blocking the event loop), and that nothing is run twice or out of order.
Real files in tmp_path.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import _sqlite
from aiotask.backends import EncodedResult, ResultRecord
from aiotask.backends.sqlite import SQLiteBackend
from aiotask.brokers import Outgoing
from aiotask.brokers.sqlite import SQLiteBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from aiotask.states import SUCCESS

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future
    from concurrent.futures import ThreadPoolExecutor as Executor
    from pathlib import Path


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every call handed to a connection's thread, in order."""
    seen: list[str] = []
    real = _sqlite.Connection._queued_call

    def counted(
        self: _sqlite.Connection, executor: Executor, call: Callable[[], object]
    ) -> Future[object]:
        # run(fn) hands over partial(self._call, fn, ...): name fn, or fn's own partial's
        fn = call.args[0] if isinstance(call, functools.partial) and call.args else call
        fn = fn.func if isinstance(fn, functools.partial) else fn
        seen.append(getattr(fn, "__name__", "?"))
        return real(self, executor, call)

    monkeypatch.setattr(_sqlite.Connection, "_queued_call", counted)
    return seen


def out(i: int) -> Outgoing:
    return Outgoing(queue="q", body=f"body-{i}".encode(), message_id=f"m{i}")


def settings(url: str) -> Settings:
    return Settings(broker_url=url, result_backend=url, visibility_timeout=30.0)


async def test_an_idle_connection_runs_the_message_path_without_a_thread_hop(
    sqlite_url: str, hops: list[str]
) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    backend = SQLiteBackend(sqlite_url, settings(sqlite_url))
    await broker.connect()
    await backend.connect()
    await broker.publish([out(0)])  # the first publish also makes the fairness table
    await asyncio.sleep(_sqlite.CHECK_INTERVAL * 1.5)  # the file's check falls due meanwhile
    hops.clear()
    for i in range(1, 4):
        await broker.publish([out(i)])
        got = await broker.receive(["q"], 10)
        await backend.store([EncodedResult.of(ResultRecord(f"t{i}", SUCCESS, i), 60.0)])
        assert await backend.get(f"t{i}") is not None
        record = await backend.wait(f"t{i}", timeout=1)
        assert record.state == SUCCESS
        await broker.ack(got)
    assert hops == []
    await broker.close()
    await backend.close()


async def test_a_batch_over_quick_rows_goes_to_the_thread(sqlite_url: str, hops: list[str]) -> None:
    """The event loop is never held for a big batch: its rows are written on the thread."""
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await broker.connect()
    await broker.publish([out(0)])
    hops.clear()
    await broker.publish([out(i) for i in range(1, _sqlite.QUICK_ROWS + 1)])
    assert hops == []
    await broker.publish([out(i) for i in range(1000, 1001 + _sqlite.QUICK_ROWS)])
    assert hops == ["_insert"]
    got = await broker.receive(["q"], 1000)
    assert len(got) == 1 + _sqlite.QUICK_ROWS + _sqlite.QUICK_ROWS + 1
    assert hops == ["_insert", "_claim_rows"]
    await broker.ack(got)
    assert hops == ["_insert", "_claim_rows", "_settle"]
    await broker.close()


async def test_a_held_write_lock_sends_the_call_to_the_thread_and_the_loop_runs_on(
    sqlite_url: str, tmp_path: Path, hops: list[str]
) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await broker.connect()
    await broker.publish([out(0)])
    holder = sqlite3.connect(tmp_path / "aiotask.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        hops.clear()
        sending = asyncio.create_task(broker.publish([out(1)]))
        ticks = 0
        for _ in range(20):  # 0.2 s: the loop keeps turning while the send waits
            await asyncio.sleep(0.01)
            ticks += 1
            assert not sending.done()
        holder.execute("COMMIT")
    finally:
        holder.close()
    async with asyncio.timeout(5):
        await sending
    assert ticks == 20
    assert hops == ["_insert"]  # tried inline once, then waited on the thread
    got = await broker.receive(["q"], 10)
    assert sorted(d.message_id for d in got) == ["m0", "m1"]  # m1 once, not twice
    await broker.close()


async def test_a_cancelled_claim_on_the_thread_is_handed_back(
    sqlite_url: str, tmp_path: Path, hops: list[str]
) -> None:
    """On the thread, a claim may commit after its receive was cancelled: its rows go back.
    (Inline: test_sqlite_broker.py::test_cancelled_claim_is_handed_back_without_counting.)"""
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await broker.connect()
    holder = sqlite3.connect(tmp_path / "aiotask.db", isolation_level=None, check_same_thread=False)
    try:
        for _ in range(10):
            await broker.publish([out(1)])
            # the claim meets the lock, goes to the thread, and waits there
            holder.execute("BEGIN IMMEDIATE")
            threading.Timer(0.02, holder.execute, ("COMMIT",)).start()
            waiter = asyncio.create_task(broker.receive(["q"], 5))
            await asyncio.sleep(0.005)
            waiter.cancel()
            try:
                got = await waiter
            except asyncio.CancelledError:
                async with asyncio.timeout(2):  # far less than the 30 s lease
                    got = await broker.receive(["q"], 5)
            assert [(d.message_id, d.deliveries) for d in got] == [("m1", 1)]
            await broker.ack(got)
            await asyncio.sleep(0.03)  # the timer's COMMIT has run
    finally:
        holder.close()
    assert "_claim_rows" in hops
    await broker.close()


def _insert(conn: sqlite3.Connection, value: int) -> None:
    with _sqlite.transaction(conn):
        conn.execute("INSERT INTO t (x) VALUES (?)", (value,))


SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER)"


async def test_an_inline_call_waits_behind_a_call_on_the_thread(tmp_path: Path) -> None:
    db = _sqlite.Connection(str(tmp_path / "order.db"), SCHEMA)
    await db.open()
    order: list[str] = []

    def slow(conn: sqlite3.Connection) -> None:
        time.sleep(0.2)
        order.append("slow")

    def quick(conn: sqlite3.Connection) -> None:
        order.append("quick")

    running = asyncio.ensure_future(db.run(slow))
    await asyncio.sleep(0.05)  # on the thread now, holding the connection
    assert db.attempt(quick) == (False, None)
    await db.run_quick(quick)
    await running
    assert order == ["slow", "quick"]
    assert db.attempt(quick) == (True, None)  # idle again: inline
    await db.close()


def test_two_threads_share_one_connection_one_call_at_a_time(tmp_path: Path) -> None:
    """A sync producer's loop and the app's loop may share a connection: calls never overlap."""
    path = str(tmp_path / "shared.db")
    errors: list[BaseException] = []

    async def setup() -> _sqlite.Connection:
        db = _sqlite.Connection(path, SCHEMA)
        await db.open()
        return db

    db = asyncio.run(setup())

    def writer(first: int) -> None:
        async def main() -> None:
            for i in range(first, first + 300):
                await db.run_quick(_insert, i)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n * 1000,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sqlite3.connect(path) as check:
        values = sorted(x for (x,) in check.execute("SELECT x FROM t"))
    assert values == [n * 1000 + i for n in range(3) for i in range(300)]
    asyncio.run(db.close())


async def test_an_inline_error_reads_as_the_threads_does(tmp_path: Path) -> None:
    db = _sqlite.Connection(str(tmp_path / "err.db"), SCHEMA)
    await db.open()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(BrokerConnectionError, match="no such table") as inline:
        await db.run_quick(broken)
    with pytest.raises(BrokerConnectionError, match="no such table") as threaded:
        await db.run(broken)
    assert str(inline.value) == str(threaded.value)
    assert db.attempt(lambda conn: 1) == (True, 1)  # the lock was released
    await db.close()
