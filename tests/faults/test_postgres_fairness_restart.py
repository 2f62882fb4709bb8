"""Fairness keys on PostgreSQL through a server restart (issue 18), on a private server: a real
worker drains a keyed backlog (A: 300, B: 10), the server shuts down immediately (every
connection drops, crash recovery on the next start) mid-drain and comes back. Nothing is lost,
the fair cursor keeps serving the keys in turns after the restart (B, and C — a key first sent
after the restart — finish while most of A's backlog still waits), and no row stays leased.

No timing assertions: the order of the `finished` log (written by the task itself) is the
measure, with bounds far from what turns give (about one A per B or C) and from FIFO (every A
first)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import asyncpg
import pytest

from aiotask import App
from tests.procs import StderrTail, lines, start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.servers import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]

BIG, SMALL = 300, 10
#: A's finished before the last of a small key: turns give about SMALL plus what the worker
#: holds (prefetch 4 + 4 running); FIFO would give every A first (BIG)
TURNS_BOUND = 100
SETTINGS = {
    "AIOTASK_PREFETCH": "4",
    "AIOTASK_WORKER_LOST_AFTER": "3",
    "AIOTASK_WORKER_HEARTBEAT_INTERVAL": "0.5",
}


def _tenant(key: str, *_: object) -> str:
    """proc.slow's key is `tenant-i`: the tenant is the fairness key."""
    return key.partition("-")[0]


async def _send(app: App, tenant: str, n: int, seconds: float) -> list[str]:
    keys = [f"{tenant}-{i}" for i in range(n)]
    for key in keys:
        await app.send_task("proc.slow", [key, seconds], fairness_key=_tenant)
    return keys


async def _until(
    predicate: Callable[[], bool], what: str, tail: StderrTail, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not in {timeout}s\n{tail.text()}")
        await asyncio.sleep(0.05)


async def _until_sql(url: str, sql: str, timeout: float = 60) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval(sql):
            assert time.monotonic() < deadline, f"not in {timeout}s: {sql}"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def _a_before_last(done: list[str], tenant: str, start: int = 0) -> int:
    """A's finished from position `start` up to the last of `tenant`'s."""
    last = max(i for i, key in enumerate(done) if key.startswith(f"{tenant}-"))
    return sum(1 for key in done[start:last] if key.startswith("A-"))


async def test_keyed_turns_survive_a_postgres_restart_mid_drain(
    tmp_path: Path, postgres_server: PrivatePostgres, namespace: str
) -> None:
    url = postgres_server.url
    s = f'"{namespace}"'
    env = worker_env(write_tasks(tmp_path), url, AIOTASK_KEY_PREFIX=namespace, **SETTINGS)

    def finished() -> list[str]:
        return lines(tmp_path, "finished")

    async with App("proc", broker=url, key_prefix=namespace) as app:
        a_keys = await _send(app, "A", BIG, 0.03)
        b_keys = await _send(app, "B", SMALL, 0.03)
        worker = start_worker(tmp_path, env, "-c", "4")
        tail = StderrTail(worker)  # read all along: the outage's warnings would fill the pipe
        try:
            await _until(lambda: len(finished()) >= 6, "the drain under way", tail)
            postgres_server.crash()  # immediate shutdown mid-drain: every connection drops
            await asyncio.to_thread(postgres_server.start)  # crash recovery, same data
            c_keys = await _send(app, "C", SMALL, 0.03)  # first seen after the restart
            mark = len(finished())  # what finished before every C was queued
            want = {*a_keys, *b_keys, *c_keys}
            await _until(lambda: {*b_keys, *c_keys} <= set(finished()), "B and C done", tail)
            done = finished()
            print(
                "DBG",
                mark,
                _a_before_last(done, "B"),
                _a_before_last(done, "C", mark),
                len(done),
                [k for k in done if not k.startswith("A")],
            )
            assert _a_before_last(done, "B") < TURNS_BOUND, done
            assert _a_before_last(done, "C", mark) < TURNS_BOUND, done
            await _until(lambda: want <= set(finished()), "every message done", tail)
            # every row acked (deleted): none left leased, none lost in a lease
            await _until_sql(url, f"SELECT count(*) = 0 FROM {s}.messages")  # noqa: S608
            assert worker.poll() is None  # the worker rode out the restart
        finally:
            code = stop(worker)
    assert code == 0
    conn = await asyncpg.connect(url)
    try:
        cursors = await conn.fetch(f"SELECT queues, last_key FROM {s}.fair_cursor")  # noqa: S608
    finally:
        await conn.close()
    assert [(r["queues"], r["last_key"]) for r in cursors] == [("default", "A")]
    done = finished()
    started = lines(tmp_path, "started")
    # at-least-once: only a message in the worker's hands at the restart may run twice
    assert len(done) - len(want) <= 8, done
    assert all(started.count(k) <= 2 for k in want)
