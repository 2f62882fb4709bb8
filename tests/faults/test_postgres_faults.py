"""PostgreSQL faults on a private server: a worker killed with -9, the server restarted mid-run,
a long transaction holding row locks, and a server crash (kill -9) losing the newest commits
made without waiting for the WAL flush. Nothing is lost; a message runs again only when the
worker that had it died or its ack was lost (at-least-once), never because another worker took
a live one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from aiotask import App
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.states import SUCCESS
from aiotask.worker.outcome import Settlement
from aiotask.worker.settle import Settler
from tests.procs import StderrTail, lines, start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from aiotask.brokers.base import Delivery
    from tests.servers import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]

#: a lost worker's messages move after this (the default 10 s would only make the test slower)
FAST_TAKEOVER = {"AIOTASK_WORKER_LOST_AFTER": "3", "AIOTASK_WORKER_HEARTBEAT_INTERVAL": "0.5"}


@pytest.fixture
def postgres_server(module_postgres_server: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The module's private server (one copy and start for all its tests), put back after each
    test as the next expects it, also when the test failed half-way: running, no process
    stopped, default settings."""
    server = module_postgres_server
    yield server
    if server.proc is None or server.proc.poll() is not None:
        server.proc = None  # a test failed between a crash and the restart
        server.start()
    for pid in _children(server):  # a test failed with the WAL writers stopped
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    subprocess.run(
        [
            *("psql", "-d", server.url, "-q"),
            *("-c", "ALTER SYSTEM RESET ALL", "-c", "SELECT pg_reload_conf()"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=30,
    )


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_kill_9_of_a_worker_loses_nothing(
    tmp_path: Path, postgres_server: PrivatePostgres, namespace: str
) -> None:
    url = postgres_server.url
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace, **FAST_TAKEOVER)
    first = start_worker(tmp_path, env, "-c", "10")
    StderrTail(first)  # read all along: an outage's warnings would fill the pipe
    second = None
    keys = [f"k{i}" for i in range(60)]
    try:
        async with App("proc", broker=url, key_prefix=namespace) as app:
            sent = [await app.send_task("proc.slow", args=[k, 0.3]) for k in keys]
            await _until(lambda: len(lines(tmp_path, "finished")) >= 15, 30)
            stop(first, signal.SIGKILL)
            before_kill = set(lines(tmp_path, "started"))
            second = start_worker(tmp_path, env, "-c", "10")
            StderrTail(second)  # read all along: an outage's warnings would fill the pipe
            got = [await app.AsyncResult(r.id).get(timeout=60) for r in sent]
            assert got == keys
        started, finished = lines(tmp_path, "started"), lines(tmp_path, "finished")
        assert set(finished) == set(keys)
        again = {k for k in started if started.count(k) > 1}
        # only what the killed worker held runs again, and only once more
        assert again <= before_kill
        assert all(started.count(k) <= 2 for k in keys)
    finally:
        if first.poll() is None:
            stop(first, signal.SIGKILL)
        if second is not None:
            assert stop(second) == 0


async def test_server_restart_mid_run_loses_nothing(
    tmp_path: Path, postgres_server: PrivatePostgres, namespace: str
) -> None:
    url = postgres_server.url
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace, **FAST_TAKEOVER)
    worker = start_worker(tmp_path, env, "-c", "10")
    StderrTail(worker)  # read all along: an outage's warnings would fill the pipe
    keys = [f"a{i}" for i in range(60)]
    late = [f"b{i}" for i in range(20)]
    try:
        async with App("proc", broker=url, key_prefix=namespace) as app:
            sent = [await app.send_task("proc.slow", args=[k, 0.1]) for k in keys]
            await _until(lambda: len(lines(tmp_path, "finished")) >= 10, 30)
            postgres_server.crash()  # immediate shutdown: every connection drops
            # sent while the server is down: publish retries until it is back
            publishing = asyncio.ensure_future(
                asyncio.gather(*(app.send_task("proc.slow", args=[k, 0.1]) for k in late))
            )
            await asyncio.sleep(1.0)
            assert not publishing.done()
            await asyncio.to_thread(postgres_server.start)
            sent += await asyncio.wait_for(publishing, 60)
            got = [await app.AsyncResult(r.id).get(timeout=60) for r in sent]
            assert got == keys + late
        assert set(lines(tmp_path, "finished")) == set(keys + late)
        assert worker.poll() is None  # the worker rode out the restart
    finally:
        assert stop(worker) == 0


async def test_a_long_transaction_holding_a_row_lock_blocks_only_that_row(
    tmp_path: Path, postgres_server: PrivatePostgres, namespace: str
) -> None:
    """SKIP LOCKED: a row locked elsewhere (a long report, a stuck admin session) is skipped,
    the rest of the queue flows, and the row is delivered once the lock is released."""
    url = postgres_server.url
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace)
    async with App("proc", broker=url, key_prefix=namespace) as app:
        held = await app.send_task("proc.add", args=[0, 0])
        others = [await app.send_task("proc.add", args=[i, i]) for i in range(1, 20)]
        locker = await asyncpg.connect(url)
        worker = None
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute(
                f'SELECT 1 FROM "{namespace}".messages WHERE message_id = $1 FOR UPDATE',  # noqa: S608
                held.id,
            )
            worker = start_worker(tmp_path, env, "-c", "10")
            StderrTail(worker)  # read all along: an outage's warnings would fill the pipe
            assert [await r.get(timeout=30) for r in others] == [2 * i for i in range(1, 20)]
            assert await held.state() == "PENDING"
            await tx.rollback()
            assert await held.get(timeout=30) == 0  # woken by the next look (no NOTIFY)
        finally:
            await locker.close()
            if worker is not None:
                assert stop(worker) == 0


def _kill_9_cluster(server: PrivatePostgres) -> None:
    """kill -9 of the postmaster we started and of each of its children (by PID): a crash
    that loses whatever WAL is still in shared memory, unlike an immediate shutdown."""
    assert server.proc is not None
    parent = server.proc.pid
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path("/proc", entry, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry))
    os.kill(parent, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait(20)
    server.proc = None
    # the children are not ours to wait for: until each is gone (or a zombie), it still holds
    # the shared memory, and a new postmaster refuses to start ("pre-existing shared memory
    # block ... is still in use"), as one clean-clone run saw
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "killed server processes did not exit"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_server_crash_after_async_acks_redelivers_and_loses_nothing(
    tmp_path: Path, postgres_server: PrivatePostgres, namespace: str
) -> None:
    """A crash (kill -9 of every server process) right after the acks, with a slow WAL writer:
    every task has its result or its message, and any message whose ack was lost runs again
    (acks commit without waiting for the WAL flush; results wait)."""
    url = postgres_server.url
    admin = await asyncpg.connect(url)
    try:  # async commits stay in shared memory for up to 10 s: a crash then loses them
        await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()
    env = worker_env(
        write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace, AIOTASK_VISIBILITY_TIMEOUT="3"
    )
    keys = [f"c{i}" for i in range(30)]
    worker = start_worker(tmp_path, env, "-c", "10")
    StderrTail(worker)  # read all along: an outage's warnings would fill the pipe
    try:
        async with App("proc", broker=url, key_prefix=namespace) as app:
            sent = [await app.send_task("proc.slow", args=[k, 0.01]) for k in keys]
            assert [await r.get(timeout=30) for r in sent] == keys  # results seen: stored
            s = f'"{namespace}"'
            conn = await asyncpg.connect(url)
            try:
                await _until_async(lambda: conn.fetchval(f"SELECT count(*) = 0 FROM {s}.messages"))  # noqa: S608
            finally:
                await conn.close()
            _kill_9_cluster(postgres_server)  # every ack committed, maybe not yet on disk
            await asyncio.to_thread(postgres_server.start)
            conn = await asyncpg.connect(url)
            try:
                ids = [r.id for r in sent]
                kept = await conn.fetchval(
                    f"SELECT count(*) FROM unnest($1::text[]) AS t(id) WHERE EXISTS (SELECT 1 "  # noqa: S608
                    f"FROM {s}.results r WHERE r.task_id = t.id AND r.ready) OR EXISTS ("
                    f"SELECT 1 FROM {s}.messages m WHERE m.message_id = t.id)",
                    ids,
                )
                assert kept == len(ids), "a task lost both its result and its message"
                again = await conn.fetchval(f"SELECT count(*) FROM {s}.messages")  # noqa: S608
                print(f"after the crash: {again} of {len(ids)} messages back (acks lost)")
            finally:
                await conn.close()
            # the worker rides out the crash; messages whose ack was lost run again
            assert [await app.AsyncResult(i).get(timeout=60) for i in ids] == keys
        finished = lines(tmp_path, "finished")
        assert set(finished) == set(keys)
        ran_twice = {k for k in keys if finished.count(k) > 1}
        assert len(ran_twice) <= again  # only tasks whose message survived ran again
    finally:
        assert stop(worker) == 0


def _children(server: PrivatePostgres, *names: str) -> list[int]:
    """PIDs of the server's processes whose title names one of `names` ("walwriter"); all of
    them when no name is given."""
    assert server.proc is not None
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path("/proc", entry, "stat").read_text()
                title = Path("/proc", entry, "cmdline").read_bytes().decode(errors="replace")
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == server.proc.pid and (not names or any(n in title for n in names)):
                    found.append(int(entry))
    return found


async def test_a_result_stored_before_a_crash_outlives_an_ack_made_after_the_restart(
    postgres_server: PrivatePostgres, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settler stores a result, then acks. A crash in between need not reach the settler
    as an error: its ack may simply run once the server is back. A result store that had
    committed without waiting for the WAL flush is then gone while the ack deletes the
    message, and the task's outcome is lost (about a third of the runs of
    test_server_restart_mid_run_loses_nothing when worker stores skipped the flush). Here the
    WAL writers are stopped (SIGSTOP), so a commit that its own backend did not flush surely
    stays in shared memory, and every server process is killed (-9) just before the ack."""
    url = postgres_server.url
    async with App("proc", broker=url, key_prefix=namespace) as app:
        sent = await app.send_task("proc.add", args=[1, 2])
        [delivery] = await app.broker.receive([app.conf.default_queue], 1)
        await app.send_task("proc.add", args=[0, 0])  # a flushed commit: the claim is on disk
        for pid in _children(postgres_server, "walwriter", "background writer"):
            os.kill(pid, signal.SIGSTOP)
        ack = app.broker.ack

        async def ack_after_a_crash(deliveries: Sequence[Delivery]) -> None:
            _kill_9_cluster(postgres_server)
            await asyncio.to_thread(postgres_server.start)
            await ack(deliveries)

        monkeypatch.setattr(app.broker, "ack", ack_after_a_crash)
        record = EncodedResult.of(ResultRecord(sent.id, SUCCESS, 3), 3600)
        settler = Settler(app, lambda _done: None)
        settler.add(Settlement(delivery, store=record))
        await settler.flush()  # as a worker does: store, then ack
        stats = await app.broker.queue_stats([app.conf.default_queue])
        kept = await app.backend.get(sent.id) if app.backend is not None else None
        # at-least-once: the result is stored, or the message is still there to run again
        assert kept is not None or stats[0].ready + (stats[0].in_flight or 0) == 2, "lost"
        assert kept is not None and kept.result == 3  # stores wait for the flush


async def _until_async(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
