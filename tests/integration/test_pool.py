"""The process pool end to end: real children, killed, timed out, recycled and terminated."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import pytest

from aiotask.exceptions import TaskRevoked, TimeLimitExceeded, WorkerLost
from aiotask.testing import start_worker
from aiotask.worker.pool import SyncPool
from tests.integration import tasks_pool as t

if TYPE_CHECKING:
    from pathlib import Path

    from aiotask.worker import Worker

app = t.app
TIMEOUT = 30


@pytest.fixture
def fifos(tmp_path: Path) -> Path:
    for name in ("started", "go"):
        os.mkfifo(tmp_path / name)
    return tmp_path


async def started(where: Path) -> int:
    """The pid of the child that reached rendezvous()."""
    return int(await asyncio.to_thread((where / "started").read_text))


async def go(where: Path) -> None:
    await asyncio.to_thread((where / "go").write_text, "go")


def gone(pid: int) -> bool:
    """Not running: reaped, or a zombie left for an init that does not reap (containers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def dead_letter_reason(message_id: str) -> str:
    async with asyncio.timeout(TIMEOUT):
        while True:
            for dead in await app.broker.dead_letters("default"):
                if dead.message_id == message_id:
                    return dead.reason
            await asyncio.sleep(0.01)


RUN_ONE_JOB = """
import asyncio, sys
from aiotask.worker.pool import SyncPool
from tests.integration import tasks_pool as t
asyncio.run(SyncPool(1).run(t.__name__, t.blocks.name, [sys.argv[1]], {}))
"""


async def test_children_start_lazily_and_survive_crashes_of_one_another() -> None:
    async with start_worker(app, processes=2) as worker:
        assert await (await t.ping.send()).get(timeout=TIMEOUT) == "pong"
        assert worker.pool.pids == []  # coroutine tasks start no child

        pid = await (await t.whoami.send()).get(timeout=TIMEOUT)
        assert pid != os.getpid()
        assert pid in worker.pool.pids

        with pytest.raises(WorkerLost, match=r"exits\[.*exit code 3"):
            await (await t.exits.send(3)).get(timeout=TIMEOUT)
        # SIGKILL mid-task: WorkerLost is retried by policy, the second attempt succeeds
        assert await (await t.killed_once.send()).get(timeout=TIMEOUT) == 1
        assert await (await t.whoami.send()).get(timeout=TIMEOUT) in worker.pool.pids
        assert len(worker.pool.pids) <= 2
    assert gone(pid)


async def test_time_limits_and_retry_from_a_child() -> None:
    async with start_worker(app, processes=2) as worker:
        hard, soft, retried = await asyncio.gather(
            t.stuck.send(), t.cleans_up.send(), t.retries_itself.send()
        )
        with pytest.raises(TimeLimitExceeded, match=r"stuck\[.*0\.5s"):
            await hard.get(timeout=TIMEOUT)
        assert await soft.get(timeout=TIMEOUT) == "cleaned up"
        assert await retried.get(timeout=TIMEOUT) == 2

        rejected = await t.rejects.send()  # Reject travels back with its reason and requeue
        assert await dead_letter_reason(rejected.id) == "not for me"
        assert await (await t.whoami.send()).get(timeout=TIMEOUT) in worker.pool.pids


async def test_bound_context_update_state_and_sigint_immunity(fifos: Path) -> None:
    async with start_worker(app, processes=1):
        r = await t.reports.send(str(fifos))
        pid = await started(fifos)
        # stored by the parent before the child's update_state returned
        assert await r.state() == "PROGRESS"
        assert await r.info() == {"step": 1}
        os.kill(pid, signal.SIGINT)  # children leave stopping to the worker
        os.kill(pid, signal.SIGTERM)
        await go(fifos)
        assert await r.get(timeout=TIMEOUT) == {
            "id": r.id,
            "name": t.reports.name,
            "args": [str(fifos)],
            "retries": 0,
            "root": r.id,
            "go": "go",
        }


async def settled(worker: Worker, count: int) -> None:
    """The worker finished `count` messages and settled everything it held."""
    async with asyncio.timeout(TIMEOUT):
        while worker.dispatcher.processed < count or worker.dispatcher.held:
            await asyncio.sleep(0.01)
    assert worker.dispatcher.processed == count


async def assert_queue_empty(*ids: str) -> None:
    """After the worker has gone (memory://: close() hands back whatever it did not settle)."""
    async with app:
        try:
            async with asyncio.timeout(0.5):
                back = await app.broker.receive(["default"], 10)
        except TimeoutError:
            back = []
        assert [d.message_id for d in back] == [], "a terminated message was not acked"
        dead = {d.message_id for d in await app.broker.dead_letters("default")}
        assert not dead & set(ids), "a terminated message was dead-lettered, not acked"


async def test_terminate_kills_only_that_job(fifos: Path) -> None:
    async with start_worker(app, processes=1) as worker:
        r = await t.blocks.send(str(fifos))
        pid = await started(fifos)
        assert not await worker.pool.terminate("not-running-here")
        assert await worker.pool.terminate(r.id)
        with pytest.raises(TaskRevoked):
            await r.get(timeout=TIMEOUT)  # no revoke(): only the worker can have stored it
        assert await r.state() == "REVOKED"
        assert gone(pid)
        assert await (await t.whoami.send()).get(timeout=TIMEOUT) != pid
        await settled(worker, 2)
    await assert_queue_empty(r.id)


async def test_revoke_terminate_reaches_a_pool_task(fifos: Path) -> None:
    async with start_worker(app, processes=1) as worker:
        r = await t.blocks.send(str(fifos))
        pid = await started(fifos)
        await r.revoke(terminate=True)  # records REVOKED itself: proves nothing on its own
        # The child running it is killed (not left blocked on the FIFO)...
        async with asyncio.timeout(TIMEOUT):
            while not gone(pid):
                await asyncio.sleep(0.01)
        # ...and the worker settles the message: processed once, acked, the slot free again.
        await settled(worker, 1)
        assert await (await t.whoami.send()).get(timeout=TIMEOUT) != pid
        with pytest.raises(TaskRevoked):
            await r.get(timeout=TIMEOUT)
        assert await r.state() == "REVOKED"
    assert worker.dispatcher.processed == 2
    await assert_queue_empty(r.id)


async def test_max_tasks_per_child_recycles_without_losing_jobs() -> None:
    async with start_worker(app, processes=1, max_tasks_per_child=1):
        results = [await t.whoami.send() for _ in range(3)]
        pids = [await r.get(timeout=TIMEOUT) for r in results]
    assert len(set(pids)) == 3


async def test_max_memory_per_child_recycles_a_child_that_grew() -> None:
    pool = SyncPool(1, max_memory_per_child=150_000)
    try:
        big_payload = "x" * (3 << 20)  # far beyond a pipe's buffer, both ways
        assert await pool.run(t.__name__, t.echo.name, [big_payload], {}) == big_payload
        small = [await pool.run(t.__name__, t.hoards.name, [1], {}) for _ in range(2)]
        assert small[0] == small[1]  # under the limit: the child is kept
        big = await pool.run(t.__name__, t.hoards.name, [200], {})
        assert big == small[0]
        after = await pool.run(t.__name__, t.whoami.name, [], {})
        assert after != big
        os.kill(after, signal.SIGKILL)  # an idle child dying (OOM killer) is noticed, reaped
        async with asyncio.timeout(TIMEOUT):
            while after in pool.pids:
                await asyncio.sleep(0.01)
        assert await pool.run(t.__name__, t.whoami.name, [], {}) not in (after, big)
    finally:
        pool.close()
    assert gone(big)
    assert gone(after)
    assert pool.pids == []


async def test_cancelling_a_job_kills_its_child(fifos: Path) -> None:
    pool = SyncPool(1)
    try:
        job = asyncio.create_task(pool.run(t.__name__, t.blocks.name, [str(fifos)], {}))
        pid = await started(fifos)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert pool.pids == []
        assert gone(pid)
    finally:
        pool.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_worker_killed_with_sigkill_leaves_no_running_child(fifos: Path) -> None:
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", RUN_ONE_JOB, str(fifos))
    try:
        pid = await started(fifos)
    finally:
        parent.kill()
        await parent.wait()
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert gone(pid)
