"""The PostgreSQL lock and coordination stores (unique locks, global rates, concurrency slots)
across a crash and restart of a private server: what was committed before the crash holds
after it, calls made while it is down wait and then complete, a lock or lease whose holder is
gone lapses at the end of its lifetime (the server's clock), and a server that stays down
past broker_unreachable_timeout is a clear BrokerConnectionError that names the operation."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.exceptions import BrokerConnectionError, ResultTimeout
from tests.procs import StderrTail, lines, start_worker, stop, worker_env

if TYPE_CHECKING:
    from pathlib import Path

    from tests.servers import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]

FAST_TAKEOVER = {"AIOTASK_WORKER_LOST_AFTER": "3", "AIOTASK_WORKER_HEARTBEAT_INTERVAL": "0.5"}
#: the lifetime of the short-lived lock and lease: lapses while the server restarts, or soon after
SHORT = 2.0
#: outlives the whole test: must still hold after the restart
LONG = 120.0


async def test_locks_slots_and_rates_hold_through_a_restart_and_lapse_on_time(
    postgres_server: PrivatePostgres, namespace: str
) -> None:
    app = App("pgcoord", broker="memory://", backend=postgres_server.url, key_prefix=namespace)
    async with app:
        assert app.backend is not None
        locks, coord = app.backend.lock_store(), app.backend.coordination_store("pgcoord")
        assert await locks.acquire("long", "a", LONG) is None
        assert await coord.acquire_slot("cust", 2, "t-long", LONG)
        short_from = time.monotonic()
        assert await locks.acquire("short", "a", SHORT) is None
        assert await coord.acquire_slot("cust", 2, "t-short", SHORT)
        assert (await coord.take_rate("per-minute", 60.0)).wait == 0.0

        postgres_server.crash()  # immediate shutdown: every pooled connection drops
        during = asyncio.gather(
            locks.acquire("long", "b", LONG),
            coord.take_rate("per-minute", 60.0),
        )
        await asyncio.sleep(1.0)
        assert not during.done()  # waiting for the server, not failing
        postgres_server.start()
        holder, rate = await asyncio.wait_for(during, 60)
        assert holder == "a"  # committed before the crash: still held
        assert rate.wait > 30.0  # the rate's state survived: the next start is a minute away

        # the holder of the short lock and lease "died" meanwhile: both lapse on time
        await asyncio.sleep(max(0.0, short_from + SHORT + 0.5 - time.monotonic()))
        assert await locks.acquire("short", "b", LONG) is None
        assert await coord.slots_in_use("cust") == 1  # the long lease only
        assert await coord.acquire_slot("cust", 2, "t-new", LONG)
        assert not await coord.acquire_slot("cust", 2, "t-over", LONG)  # never limit + 1

        await coord.release_slots([("cust", "t-long"), ("cust", "t-new")])
        await locks.release([("long", "a"), ("short", "b")])
        assert await coord.slots_in_use("cust") == 0
        assert await locks.get("long") is None


async def test_a_server_down_too_long_is_a_clear_error_and_the_store_recovers(
    postgres_server: PrivatePostgres, namespace: str
) -> None:
    app = App(
        "pgcoord",
        broker="memory://",
        backend=postgres_server.url,
        key_prefix=namespace,
        broker_unreachable_timeout=2,
    )
    async with app:
        assert app.backend is not None
        locks, coord = app.backend.lock_store(), app.backend.coordination_store("pgcoord")
        assert await locks.acquire("job", "a", LONG) is None
        postgres_server.crash()
        with pytest.raises(BrokerConnectionError, match="cannot take a unique lock on PostgreSQL"):
            await asyncio.wait_for(locks.acquire("job", "b", LONG), 30)
        with pytest.raises(BrokerConnectionError, match="concurrency slot"):
            await asyncio.wait_for(coord.acquire_slot("cust", 1, "t1", LONG), 30)
        postgres_server.start()  # the same stores work again: no reconnect by hand
        assert await locks.acquire("job", "b", LONG) == "a"
        assert await coord.acquire_slot("cust", 1, "t1", SHORT)
        assert await coord.slots_in_use("cust") == 1
        await locks.release([("job", "a")])
        await coord.release_slots([("cust", "t1")])


TASKS = """
import asyncio, os
from aiotask import App

app = App("pgslots")
LOG = os.path.join(os.environ["TEST_LOG_DIR"], "finished")

@app.task(name="pgslots.hold", concurrency_limit=2, concurrency_key="customer")
async def hold(customer: str, i: int) -> int:
    await asyncio.sleep(0.2)
    with open(LOG, "a") as f:
        f.write(f"{customer}-{i}\\n")
    return i
"""


async def test_a_worker_holding_slots_through_a_restart_leaks_none(
    tmp_path: Path, postgres_server: PrivatePostgres, namespace: str
) -> None:
    """Concurrency-limited tasks on a worker while the server crashes and comes back: all run,
    and once they are done no slot of their key is left taken."""
    url = postgres_server.url
    (tmp_path / "logs").mkdir()
    (tmp_path / "proc_tasks.py").write_text(TASKS)  # what start_worker runs (-A proc_tasks:app)
    env = worker_env(tmp_path, url, AIOTASK_KEY_PREFIX=namespace, **FAST_TAKEOVER)
    worker = start_worker(tmp_path, env, "-c", "10")
    # read all along: the outage's retry warnings would fill the pipe and block the worker
    tail = StderrTail(worker)
    try:
        async with App("pgslots", broker=url, key_prefix=namespace) as app:
            sent = [await app.send_task("pgslots.hold", ["c", i]) for i in range(20)]
            deadline = time.monotonic() + 60
            while len(lines(tmp_path, "finished")) < 4:
                assert time.monotonic() < deadline, "no task finished"
                await asyncio.sleep(0.05)
            postgres_server.crash()
            await asyncio.sleep(1.0)
            postgres_server.start()
            try:
                got = [await r.get(timeout=90) for r in sent]
            except ResultTimeout as exc:
                done = lines(tmp_path, "finished")
                raise AssertionError(f"{exc}; finished {done}\n{tail.text()}") from exc
            assert sorted(got) == list(range(20))
            store = (await app.result_backend()).coordination_store("pgslots")
            # a slot is released in the background once its task ended, so its result can be
            # read first: wait for the releases, well inside the 30 s lease a leaked slot keeps
            deadline = time.monotonic() + 10
            while (held := await store.slots_in_use("pgslots.hold:c")) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.1)
            assert held == 0, tail.text()
    finally:
        assert stop(worker) == 0
    assert set(lines(tmp_path, "finished")) == {f"c-{i}" for i in range(20)}
