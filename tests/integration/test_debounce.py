"""Debounce through a real worker on every store (the `kit` of test_unique.py): only the last
send of a key within the window runs, with its arguments; at most one runs at a time."""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from aiotask.coordination.unique import debounce_key, latest_lock
from aiotask.exceptions import TaskRevoked
from aiotask.testing import start_worker
from tests.integration.test_revoke import settled, until
from tests.integration.test_unique import SOON, kit  # noqa: F401 - the fixture

if TYPE_CHECKING:
    from tests.integration.test_unique import Kit


async def test_only_the_last_send_within_the_window_runs(kit: Kit) -> None:  # noqa: F811
    async with start_worker(kit.app) as worker:
        typed = [await kit.save.send("doc1", text) for text in ("h", "he", "hel", "hello")]
        other = await kit.save.send("doc2", "x")  # another key: debounced on its own
        assert await typed[-1].get(timeout=SOON) == "hello"
        assert await other.get(timeout=SOON) == "x"
        for superseded in typed[:-1]:
            with pytest.raises(TaskRevoked):
                await superseded.get(timeout=SOON)
        await settled(worker, 5)
    assert kit.ran == Counter({"hello": 1, "x": 1})


async def test_a_send_after_the_window_runs_again(kit: Kit) -> None:  # noqa: F811
    async with start_worker(kit.app):
        first = await kit.save.send("doc", "one")
        assert await first.get(timeout=SOON) == "one"
        second = await kit.save.send("doc", "two")
        assert await second.get(timeout=SOON) == "two"
    assert kit.ran == Counter({"one": 1, "two": 1})


async def test_one_running_and_one_waiting_with_the_latest_arguments(kit: Kit) -> None:  # noqa: F811
    async with start_worker(kit.app) as worker:
        running = await kit.slow_save.send("doc", "v1")
        await until(lambda: kit.started == ["v1"], "the first send started")
        waiting = [await kit.slow_save.send("doc", v) for v in ("v2", "v3")]
        with pytest.raises(TaskRevoked):  # superseded by v3 while v1 runs
            await waiting[0].get(timeout=SOON)
        # v3's window is over, but v1 still runs: v3 waits (deferred), it does not start
        await asyncio.sleep(1.0)
        assert kit.started == ["v1"]
        kit.gate("v1").set()
        assert await running.get(timeout=SOON) == "v1"
        await until(lambda: kit.started == ["v1", "v3"], "the latest send started next")
        kit.gate("v3").set()
        assert await waiting[1].get(timeout=SOON) == "v3"
        await settled(worker, 3)
    assert kit.ran == Counter({"v1": 1, "v3": 1})


async def test_concurrent_sends_of_one_key_run_once(kit: Kit) -> None:  # noqa: F811
    async with start_worker(kit.app) as worker:
        sent = await asyncio.gather(*(kit.save.send("doc", f"t{i}") for i in range(20)))
        outcomes = await asyncio.gather(
            *(r.get(timeout=SOON) for r in sent), return_exceptions=True
        )
        ran = [o for o in outcomes if isinstance(o, str)]
        # One, or two when a sender's record landed after an earlier send came up (its write
        # slower than the 0.4 s window: seen on PostgreSQL under load); never none.
        assert 1 <= len(ran) <= 2, outcomes
        assert all(isinstance(o, TaskRevoked) for o in outcomes if not isinstance(o, str))
        await settled(worker, 20)
    assert sum(kit.ran.values()) == len(ran)


async def test_a_send_whose_record_lands_late_still_runs(kit: Kit) -> None:  # noqa: F811
    """A sender publishes, then records itself as the latest send. When that write is slower
    than the window (seen on PostgreSQL under load), the message comes up while the record
    still names an earlier send: it waits for its own record instead of being dropped (which
    dropped every send of the window). The earlier send ran, as nothing said a later one
    existed when it came up: two runs at worst, never none."""
    store = (await kit.app.result_backend()).lock_store()
    sig = inspect.signature(kit.save.fn)
    name = latest_lock(debounce_key(kit.save.name, "doc", ("d", "old"), {}, sig))
    old = await kit.save.send("d", "old")
    old_record = await store.get(name)
    new = await kit.save.send("d", "new")
    new_record = await store.get(name)
    assert old_record is not None and new_record is not None and old_record != new_record
    await store.put(name, old_record, 60)  # "new" has not recorded itself yet
    async with start_worker(kit.app) as worker:
        await asyncio.sleep(1.0)  # both windows are over: both messages came up
        await store.put(name, new_record, 60)  # the slow write lands
        assert await new.get(timeout=SOON) == "new"
        assert await old.get(timeout=SOON) == "old"
        await settled(worker, 2)
    assert kit.ran == Counter({"old": 1, "new": 1})
