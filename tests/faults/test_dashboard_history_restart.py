"""The dashboard's task history through a restart of the server that is both its event stream
(an EventLog: Redis Stream, PostgreSQL table) and its result backend (the history store), on a
private server: the follower and the writer recover by themselves, live pages get the changes
after it, and a dashboard started later resumes from the saved stream position (the tasks run
while none ran are folded in, from events_after, not lost)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App
from aiotask.dashboard import history as history_module
from aiotask.dashboard.history import History
from tests.procs import StderrTail, start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.servers import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class Server:
    """The private server of either kind: its URL and a crash + restart."""

    def __init__(self, server: PrivateRedis | PrivatePostgres) -> None:
        self.server = server
        self.url = server.url

    def restart(self) -> None:
        if hasattr(self.server, "crash"):
            self.server.crash()  # PostgreSQL: immediate shutdown, crash recovery on start
        else:
            self.server.kill()  # Redis: kill -9; the append-only file keeps what was acked
        time.sleep(0.5)
        self.server.start()


@pytest.fixture(params=["redis", "postgres"])
def server(request: pytest.FixtureRequest) -> Server:
    return Server(request.getfixturevalue(f"{request.param}_server"))


@pytest.fixture(autouse=True)
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Follow again 0.2 s after a failure (2 s by default): the test waits less."""
    monkeypatch.setattr(history_module, "RETRY_DELAY", 0.2)


async def _stored(h: History, app: App, task_id: str, timeout: float = 60) -> str:
    """Until the store's row of `task_id` says SUCCESS; its state."""
    store = await h.store(app)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = (await store.get_many([task_id])).get(task_id)
        if row is not None and row.state == "SUCCESS":
            return row.state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} not stored as SUCCESS in {timeout}s; problem: {h.problem}")


async def _live(changes: asyncio.Queue[dict[str, Any]], task_id: str) -> set[str]:
    """Until a live change says `task_id` succeeded; the ids of every task change seen."""
    seen: set[str] = set()
    async with asyncio.timeout(60):
        while True:
            change = await changes.get()
            seen.add(change.get("id", ""))
            if change.get("id") == task_id and change.get("state") == "SUCCESS":
                return seen


@pytest.fixture
async def running(tmp_path: Path, server: Server, namespace: str) -> AsyncIterator[App]:
    """A worker emitting events (-E) on the private server, and a producer app on it."""
    env = worker_env(write_tasks(tmp_path), server.url, AIOTASK_KEY_PREFIX=namespace)
    worker = start_worker(tmp_path, env, "-E", "-c", "4")
    StderrTail(worker)  # read all along: the outage's warnings would fill the pipe
    try:
        async with App("proc", broker=server.url, key_prefix=namespace) as app:
            yield app
    finally:
        assert stop(worker) == 0


async def test_history_follows_and_resumes_through_a_backend_restart(
    server: Server, running: App
) -> None:
    app = running
    h = History(100)
    follower = asyncio.create_task(h.run(app))
    try:
        await asyncio.wait_for(h.following.wait(), 30)
        with h.subscribe() as changes:
            first = await app.send_task("proc.add", args=[1, 1])
            assert await first.get(timeout=30) == 2
            await _stored(h, app, first.id)
            await _live(changes, first.id)

            await asyncio.to_thread(server.restart)
            second = await app.send_task("proc.add", args=[2, 2])
            assert await second.get(timeout=60) == 4
            await _stored(h, app, second.id)  # the writer got through to the store again
            await _live(changes, second.id)  # and the live pages hear of it
        await asyncio.wait_for(h.idle.wait(), 30)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

    # no dashboard runs now: a task's events wait in the stream, after the saved position
    third = await app.send_task("proc.add", args=[3, 3])
    assert await third.get(timeout=30) == 6
    await asyncio.to_thread(server.restart)
    later = History(100)
    with later.subscribe() as changes:
        follower = asyncio.create_task(later.run(app))
        try:
            # folded in at start, from the position saved before the restart: the third
            # task's events, and none of the two before it (following from the oldest kept
            # would fold those again)
            seen = await _live(changes, third.id)
            assert first.id not in seen and second.id not in seen
            await _stored(later, app, third.id)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
