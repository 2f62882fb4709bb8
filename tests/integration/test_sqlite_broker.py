"""SQLite broker and backend: what the contract suite cannot show in one process.

Real files in tmp_path; other processes are real subprocesses running a short script.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from aiotask import _sqlite
from aiotask.backends import EncodedResult, ResultBackend, ResultRecord
from aiotask.backends.sqlite import SQLiteBackend
from aiotask.brokers import Broker, Outgoing
from aiotask.brokers.sqlite import SQLiteBroker
from aiotask.settings import DEFAULT_BROKER_URL, Settings
from aiotask.states import SUCCESS

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]

# A consumer process: claims from the file until idle, prints each claimed id as a JSON line.
# argv: url, lease, mode ("drain": ack everything until idle; "die": claim one and hang;
# "beat": as "die", beating every 0.2 s with worker_lost_after=1).
CONSUMER = """
import asyncio, sys, orjson
from aiotask.brokers.sqlite import SQLiteBroker
from aiotask.settings import Settings

async def beat(broker):
    while True:
        await broker.heartbeat()
        await asyncio.sleep(0.2)

async def main(url, lease, mode):
    broker = SQLiteBroker(url, Settings(
        broker_url=url, visibility_timeout=lease, worker_heartbeat_interval=0.2,
        worker_lost_after=1.0,
    ))
    await broker.connect()
    if mode == "beat":
        await broker.heartbeat()
        beating = asyncio.create_task(beat(broker))
        mode = "die"
    print("ready", flush=True)
    idle = 30.0  # until the first message; then "idle" means drained
    while True:
        try:
            async with asyncio.timeout(idle):
                got = await broker.receive(["q"], 1 if mode == "die" else 10)
        except TimeoutError:
            break
        print(orjson.dumps([d.message_id for d in got]).decode(), flush=True)
        idle = 1.0
        if mode == "die":
            await asyncio.sleep(3600)
        await asyncio.sleep(0.002)  # some work, so that neither process drains it all
        await broker.ack(got)
    await broker.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))
"""


@contextmanager
def raw_db(path: str | Path) -> Iterator[sqlite3.Connection]:
    """Another writer on the file, in autocommit mode: what a second process would do."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def settings(url: str, lease: float = 30.0) -> Settings:
    return Settings(broker_url=url, visibility_timeout=lease, max_deliveries=3)


def out(i: int, **kw: object) -> Outgoing:
    return Outgoing(queue="q", body=f"body-{i}".encode(), message_id=f"m{i}", **kw)  # type: ignore[arg-type]


async def start_consumer(url: str, lease: float, mode: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CONSUMER,
        url,
        str(lease),
        mode,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready"
    return proc


async def claimed_ids(proc: asyncio.subprocess.Process) -> list[str]:
    assert proc.stdout is not None
    data = await asyncio.wait_for(proc.stdout.read(), 60)
    assert await proc.wait() == 0
    return [i for line in data.splitlines() for i in orjson.loads(line)]


async def test_two_processes_never_claim_the_same_message(sqlite_url: str) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await broker.connect()
    procs = [await start_consumer(sqlite_url, 30.0, "drain") for _ in range(2)]
    for start in range(0, 2000, 100):  # claims interleave with publishes
        await broker.publish([out(i) for i in range(start, start + 100)])
        await asyncio.sleep(0.005)
    first, second = [await claimed_ids(p) for p in procs]
    assert len(first) + len(second) == 2000
    assert set(first) | set(second) == {f"m{i}" for i in range(2000)}
    assert first and second, "both processes should have claimed some"
    with raw_db(broker.path) as raw:
        assert raw.execute("SELECT count(*) FROM aiotask_messages").fetchone() == (0,)
    await broker.close()


async def test_lapsed_lease_of_a_killed_consumer_is_redelivered(sqlite_url: str) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url, lease=1.0))
    await broker.connect()
    proc = await start_consumer(sqlite_url, 1.0, "die")
    await broker.publish([out(1)])
    assert proc.stdout is not None
    assert orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) == ["m1"]
    proc.send_signal(signal.SIGKILL)  # never acked, never closed
    await proc.wait()
    started = time.monotonic()
    async with asyncio.timeout(5):
        [again] = await broker.receive(["q"], 10)
    assert (again.message_id, again.deliveries) == ("m1", 2)
    assert time.monotonic() - started < 1.5
    await broker.ack([again])
    await broker.close()


async def test_killed_consumer_with_a_heartbeat_is_taken_over_long_before_its_lease(
    sqlite_url: str,
) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url, lease=60.0))
    await broker.connect()
    proc = await start_consumer(sqlite_url, 60.0, "beat")
    await broker.publish([out(1)])
    assert proc.stdout is not None
    assert orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) == ["m1"]
    try:  # past worker_lost_after while it beats: never taken
        async with asyncio.timeout(2.0):
            got = await broker.receive(["q"], 10)
    except TimeoutError:
        got = []
    assert got == []
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    async with asyncio.timeout(10):  # worker_lost_after (1 s) + a poll, not the 60 s lease
        [again] = await broker.receive(["q"], 10)
    assert (again.message_id, again.deliveries) == ("m1", 2)
    await broker.ack([again])
    with raw_db(broker.path) as raw:  # the lost consumer's heartbeat row went with it
        assert raw.execute("SELECT count(*) FROM aiotask_consumers").fetchone() == (0,)
    await broker.close()


async def test_a_file_made_before_heartbeats_existed_gains_the_table(sqlite_url: str) -> None:
    old = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await old.connect()
    await old.publish([out(1)])
    await old.close()
    with raw_db(old.path) as raw:  # the schema of the previous release
        raw.execute("DROP TABLE aiotask_consumers")
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await broker.connect()
    await broker.heartbeat()
    [d] = await broker.receive(["q"], 10)
    assert d.message_id == "m1"
    await broker.ack([d])
    with raw_db(broker.path) as raw:
        assert raw.execute("SELECT count(*) FROM aiotask_consumers").fetchone() == (1,)
    await broker.close()  # a clean exit is not a lost consumer: its row goes
    with raw_db(broker.path) as raw:
        assert raw.execute("SELECT count(*) FROM aiotask_consumers").fetchone() == (0,)


async def test_close_hands_back_unsettled_claims_at_once(sqlite_url: str) -> None:
    first = SQLiteBroker(sqlite_url, settings(sqlite_url, lease=30.0))
    second = SQLiteBroker(sqlite_url, settings(sqlite_url, lease=30.0))
    await first.connect()
    await second.connect()
    await first.publish([out(1), out(2)])
    assert len(await first.receive(["q"], 10)) == 2
    await first.close()  # a cold shutdown: no ack, no nack
    async with asyncio.timeout(1):
        got = await second.receive(["q"], 10)
    assert sorted((d.message_id, d.deliveries) for d in got) == [("m1", 2), ("m2", 2)]
    await second.close()


async def test_cancelled_claim_is_handed_back_without_counting(sqlite_url: str) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url, lease=30.0))
    await broker.connect()
    for _ in range(20):  # cancel at various points of the claim's trip through the thread
        await broker.publish([out(1)])
        waiter = asyncio.create_task(broker.receive(["q"], 5))
        await asyncio.sleep(0)
        waiter.cancel()
        try:
            got = await waiter
        except asyncio.CancelledError:
            async with asyncio.timeout(1):  # far less than the 30 s lease
                got = await broker.receive(["q"], 5)
        assert [(d.message_id, d.deliveries) for d in got] == [("m1", 1)]
        await broker.ack(got)
    await broker.close()


async def test_corrupt_rows_are_delivered_as_bytes(sqlite_url: str, tmp_path: Path) -> None:
    broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await broker.connect()
    with raw_db(broker.path) as raw:
        raw.execute(
            "INSERT INTO aiotask_messages (message_id, queue, priority, eta, body) "
            "VALUES (CAST(x'ff61' AS TEXT), 'q', 0, 0, CAST(x'fffe00' AS TEXT)), "
            "('int-body', 'q', 0, 0, 42), ('blob', 'q', 0, 0, x'00ff')"
        )
    got = await broker.receive(["q"], 10)
    assert sorted(d.body for d in got) == [b"\x00\xff", b"42", b"\xff\xfe\x00"]
    assert all(isinstance(d.message_id, str) for d in got)
    await broker.nack(got, requeue=False, reason="undecodable")
    dead = await broker.dead_letters("q")
    assert sorted(d.body for d in dead) == [b"\x00\xff", b"42", b"\xff\xfe\x00"]
    await broker.publish([out(1)])  # the broker carries on
    [d] = await broker.receive(["q"], 10)
    assert d.body == b"body-1"
    await broker.close()


async def test_publish_in_the_same_process_wakes_an_idle_receiver(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls 60 s apart: only the in-process wakeup can deliver within the 10 s below.
    monkeypatch.setattr(_sqlite, "POLL_MIN", 60.0)
    monkeypatch.setattr(_sqlite, "POLL_MAX", 60.0)
    consumer = SQLiteBroker(sqlite_url, settings(sqlite_url))
    producer = SQLiteBroker(sqlite_url, settings(sqlite_url))
    await consumer.connect()
    await producer.connect()
    waiter = asyncio.create_task(consumer.receive(["q"], 1))
    await asyncio.sleep(0.3)  # the receiver has polled once and sleeps
    await producer.publish([out(1)])
    async with asyncio.timeout(10):
        [d] = await waiter
    await consumer.ack([d])
    await consumer.close()
    await producer.close()


async def test_file_is_in_wal_mode_and_paths_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert SQLiteBroker(DEFAULT_BROKER_URL, Settings()).path == str(tmp_path / "aiotask.db")
    assert SQLiteBackend("sqlite:///sub/r.db", Settings()).path == str(tmp_path / "sub/r.db")
    absolute = f"sqlite:///{tmp_path}/abs.db"  # sqlite:////tmp/.../abs.db
    assert absolute.startswith("sqlite:////")
    assert SQLiteBroker(absolute, Settings()).path == str(tmp_path / "abs.db")
    broker = SQLiteBroker(DEFAULT_BROKER_URL, Settings())
    await broker.connect()
    await broker.close()
    with raw_db(tmp_path / "aiotask.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def rec(task_id: str, ttl: float) -> EncodedResult:
    return EncodedResult.of(ResultRecord(task_id, SUCCESS, task_id), ttl)


async def test_expired_results_are_invisible_then_deleted(sqlite_url: str) -> None:
    backend = SQLiteBackend(sqlite_url, settings(sqlite_url))
    await backend.connect()
    await backend.store([rec("short", 0.2), rec("long", 60)])
    await backend.revoke(["gone"], ttl=0.2)
    await backend.open_group("g", 2, None, ttl=0.2)
    await backend.add_to_group("g", 0, rec("g0", 60))
    await asyncio.sleep(0.3)
    assert await backend.get("short") is None
    assert "gone" not in await backend.revocations()
    assert (await backend.add_to_group("g", 1, rec("g1", 60))).size == 0
    with raw_db(backend.path) as raw:
        assert raw.execute("SELECT count(*) FROM aiotask_results").fetchone() == (2,)
    assert await backend.cleanup() == 3  # one result, one tombstone, one group
    with raw_db(backend.path) as raw:
        assert raw.execute("SELECT task_id FROM aiotask_results").fetchall() == [("long",)]
        assert raw.execute("SELECT count(*) FROM aiotask_group_members").fetchone() == (0,)
    # An expired final record no longer blocks a new one with the same id.
    await backend.store([rec("short", 60)])
    assert await backend.get("short") is not None
    await backend.close()


async def test_wait_polls_for_a_record_written_by_another_process(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A raw write rings no doorbell (an older aiotask, a script): only the safety poll sees it,
    # every BELL_WAIT_MAX; shortened here so the bound below stays a polling one.
    monkeypatch.setattr(_sqlite, "BELL_WAIT_MAX", 0.1)
    backend = SQLiteBackend(sqlite_url, settings(sqlite_url))
    await backend.connect()
    waits = [asyncio.create_task(backend.wait(f"t{i}", timeout=5)) for i in range(50)]
    await asyncio.sleep(0.3)
    with raw_db(backend.path) as raw:  # no in-process wakeup: only polling sees it
        raw.executemany(
            "INSERT INTO aiotask_results VALUES (?, ?, 1, ?, ?)",
            [
                (
                    f"t{i}",
                    SUCCESS,
                    EncodedResult.of(ResultRecord(f"t{i}", SUCCESS, i), 60).data,
                    time.time() + 60,
                )
                for i in range(50)
            ],
        )
    started = time.monotonic()
    results = await asyncio.gather(*waits)
    assert [r.result for r in results] == list(range(50))
    assert time.monotonic() - started < 0.5
    await backend.close()


async def test_control_payloads_reach_a_listener_by_polling(sqlite_url: str) -> None:
    listener = SQLiteBackend(sqlite_url, settings(sqlite_url))
    await listener.connect()

    async def first_payload() -> bytes:
        async for payload in listener.control():
            return payload
        raise AssertionError("control() ended")

    first = asyncio.create_task(first_payload())
    await asyncio.sleep(0.3)
    with raw_db(listener.path) as raw:  # another process's broadcast: no in-process wakeup
        raw.execute("INSERT INTO aiotask_control (payload, sent_at) VALUES (x'7b7d', ?)", (0,))
    assert await asyncio.wait_for(first, 2) == b"{}"
    await listener.close()


def test_implements_the_seams(sqlite_url: str) -> None:
    broker: Broker = SQLiteBroker(sqlite_url, settings(sqlite_url))
    _: ResultBackend = SQLiteBackend(sqlite_url, settings(sqlite_url))
    # conformance: mypy checks the two typed assignments above; tests/unit/test_seams.py
    # checks every method's parameters (isinstance on a runtime Protocol checks names only)
    assert broker.capabilities.priorities and not broker.capabilities.push


def test_a_writer_waits_for_the_lock_then_gets_it(tmp_path: Path) -> None:
    """`begin` retries the write lock itself (short steps, not SQLite's growing sleeps): it
    waits while another connection holds it, takes it once released, and leaves the
    connection's busy handler as it was for the other statements."""
    path = str(tmp_path / "lock.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=_sqlite.BUSY_TIMEOUT)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        released = False

        def release() -> None:
            nonlocal released
            time.sleep(0.3)
            released = True
            holder.execute("COMMIT")

        thread = threading.Thread(target=release)
        thread.start()
        with _sqlite.transaction(waiter):
            assert released  # it waited for the holder
            waiter.execute("CREATE TABLE t (x)")
        thread.join()
        busy_ms = waiter.execute("PRAGMA busy_timeout").fetchone()[0]
        assert busy_ms == int(_sqlite.BUSY_TIMEOUT * 1000)
    finally:
        holder.close()
        waiter.close()


def test_a_writer_retries_in_short_steps_before_it_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a busy lock, the first pauses stay WRITE_RETRY_MIN (a worker's transactions are
    short: the next gap is near), and only after WRITE_RETRY_FLAT do they double to the max."""
    path = str(tmp_path / "lock.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=_sqlite.BUSY_TIMEOUT)
    pauses: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        thread = threading.Thread(target=lambda: (real_sleep(0.1), holder.execute("COMMIT")))
        monkeypatch.setattr(time, "sleep", sleep)
        thread.start()
        _sqlite.begin(waiter)
        monkeypatch.undo()
        thread.join()
        waiter.execute("ROLLBACK")
    finally:
        holder.close()
        waiter.close()
    assert pauses[:2] == [_sqlite.WRITE_RETRY_MIN] * 2, pauses[:5]
    for before, after in itertools.pairwise(pauses):  # never shorter again
        assert after >= before
    assert max(pauses) <= _sqlite.WRITE_RETRY_MAX


def test_a_writer_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT", 0.2)
    path = str(tmp_path / "lock.db")
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0.2)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _sqlite.begin(waiter)
        assert not waiter.in_transaction
        holder.execute("COMMIT")
        _sqlite.begin(waiter)  # free again: taken at once
        assert waiter.in_transaction
        waiter.execute("ROLLBACK")
    finally:
        holder.close()
        waiter.close()
