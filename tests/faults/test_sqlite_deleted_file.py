"""The SQLite file is deleted (db, -wal, -shm) under a running worker; producers make a new one.

Without the inode check the worker kept its handle on the unlinked file: it claimed from a file
nobody could write to any more, and every task sent to the new file waited forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

import pytest

from aiotask import App, _sqlite
from aiotask.backends.sqlite import SQLiteBackend
from aiotask.brokers import Outgoing
from aiotask.brokers.sqlite import SQLiteBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from tests.procs import start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

    from aiotask.backends import EncodedResult


def delete_database(path: str) -> None:
    """What `rm aiotask.db*` does: the file and its WAL companions disappear by name."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def replace_with_garbage(path: str) -> None:
    delete_database(path)
    with open(path, "wb") as f:  # something that is not an SQLite database
        f.write(b"not a database" * 1000)


async def test_worker_follows_a_deleted_and_recreated_file(tmp_path: Path, namespace: str) -> None:
    db = str(tmp_path / "proc.db")
    url = f"sqlite:///{db}"
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace)
    worker = start_worker(tmp_path, env, "-c", "10")
    try:
        async with App("proc", broker=url, key_prefix=namespace) as app:
            first = await app.send_task("proc.add", args=[1, 1])
            assert await first.get(timeout=15) == 2
        delete_database(db)
        async with App("proc", broker=url, key_prefix=namespace) as app:  # makes a new file
            sent = [await app.send_task("proc.add", args=[i, 1]) for i in range(100)]
            async with asyncio.timeout(30):
                results = [await r.get() for r in sent]
        assert results == [i + 1 for i in range(100)]
        assert worker.poll() is None
        assert worker.stderr is not None
        logged = worker.stderr.read() or ""
        assert "was deleted or replaced" in logged
    finally:
        assert stop(worker) == 0


def settings(url: str) -> Settings:
    return Settings(broker_url=url, visibility_timeout=30.0)


async def test_long_lived_producer_publishes_into_the_new_file(tmp_path: Path) -> None:
    db = str(tmp_path / "q.db")
    url = f"sqlite:///{db}"
    producer = SQLiteBroker(url, settings(url))
    await producer.connect()
    await producer.publish([Outgoing("q", b"before", "m0")])
    delete_database(db)
    consumer = SQLiteBroker(url, settings(url))  # a worker started after the deletion
    await consumer.connect()
    # Held in the new file's WAL (the consumer keeps the file open): closing the producer's
    # old connection must not delete that WAL by name.
    await consumer.publish([Outgoing("q", b"early", "m1")])
    late = SQLiteBroker(url, settings(url))
    try:
        await asyncio.sleep(0.2)  # past the check interval: the next call looks at the path
        await producer.publish([Outgoing("q", b"after", "m2")])
        await late.connect()
        async with asyncio.timeout(5):
            got = await late.receive(["q"], 10)
        assert sorted(d.body for d in got) == [b"after", b"early"]
        await late.ack(got)
    finally:
        for b in (producer, consumer, late):
            await b.close()


def result(task_id: str) -> EncodedResult:
    from aiotask.backends import EncodedResult, ResultRecord
    from aiotask.states import SUCCESS

    return EncodedResult.of(ResultRecord(task_id, SUCCESS, task_id), 60)


async def test_worker_backend_stores_into_the_new_file(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    url = f"sqlite:///{db}"
    writer = SQLiteBackend(url, settings(url))  # the worker's backend, open before the deletion
    await writer.connect()
    await writer.store([result("t0")])
    delete_database(db)
    waiter = SQLiteBackend(url, settings(url))  # a producer started after it makes a new file
    await waiter.connect()
    try:
        pending = asyncio.create_task(waiter.wait("t1", timeout=5))
        await asyncio.sleep(0.2)  # past the check interval: the next call looks at the path
        await writer.store([result("t1")])
        record = await pending
        assert record.result == "t1"
    finally:
        await waiter.close()
        await writer.close()


async def test_wait_fails_loudly_when_the_file_stays_unreadable(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    url = f"sqlite:///{db}"
    backend = SQLiteBackend(url, Settings(broker_url=url, broker_unreachable_timeout=1.0))
    await backend.connect()
    try:
        waiting = asyncio.create_task(backend.wait("t1", timeout=None))
        await asyncio.sleep(0.2)
        replace_with_garbage(db)
        with pytest.raises(BrokerConnectionError, match="not a database"):
            async with asyncio.timeout(10):  # broker_unreachable_timeout, not forever
                await waiting
    finally:
        await backend.close()


async def test_a_replacement_one_connection_sees_moves_the_others_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's broker connection notices the new file (a doorbell made it look); its result
    store, on another connection, must not write its next result into the deleted file."""
    monkeypatch.setattr(_sqlite, "CHECK_INTERVAL", 60.0)  # no periodic look during the test
    path = str(tmp_path / "two.db")
    schema = "CREATE TABLE IF NOT EXISTS t (v INTEGER)"
    claims, results = _sqlite.Connection(path, schema), _sqlite.Connection(path, schema)
    await claims.open()
    await results.open()
    try:
        await results.run(_insert_value, 1)
        delete_database(path)
        claims.recheck()
        await claims.run(_insert_value, 2)  # reopens: a new file with the table
        await results.run(_insert_value, 3)  # follows at once, not after CHECK_INTERVAL
        assert await claims.run(_values) == [2, 3]
    finally:
        await claims.close()
        await results.close()


def _insert_value(conn: sqlite3.Connection, value: int) -> None:
    conn.execute("INSERT INTO t VALUES (?)", (value,))


def _values(conn: sqlite3.Connection) -> list[int]:
    return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]
