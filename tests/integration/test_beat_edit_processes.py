"""A schedule edited while beats run and a slot is due: no slot lost or doubled.

Two real `aiotask beat` processes and a worker; the test edits the entry at the very instant
one of its slots comes due (every=1 -> every=2 -> cron every 3 s -> paused -> resumed) and
counts the runs by the task's own writes. What "lost" means for an edited entry is in
docs/periodic.md ("Editing an entry while it runs"): every slot of the schedule in force, after
the last slot fired before the edit, is sent once or counted as skipped with a reason.
"""

from __future__ import annotations

import asyncio
import math
import textwrap
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.beat.entry import Entry
from aiotask.beat.schedule import Every
from tests.contract.conftest import delete_prefix
from tests.integration.test_beat_processes import (
    _env,
    _logs,
    _ran_every_send,
    _start,
    _wait_started,
)
from tests.procs import stop

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

MODULE = textwrap.dedent(
    """
    import os
    from aiotask import App, TaskContext

    app = App("beatedit")

    @app.task(name="beatedit.tick", bind=True)
    async def tick(ctx: TaskContext) -> None:
        with open(os.environ["TEST_RUNS"], "a") as f:
            f.write(ctx.id + "\\n")
    """
)


async def _at_boundary(multiple: int) -> float:
    """Sleep until the next unix second divisible by `multiple` (a slot's instant); return it."""
    target = (math.floor(time.time() / multiple) + 1) * multiple
    await asyncio.sleep(target - time.time())
    return float(target)


def _phase(slots: list[int], start: float, end: float) -> list[int]:
    """The slots safely inside (start, end): half a second from either edit."""
    return [s for s in slots if start + 0.5 < s < end - 0.5]


async def test_edits_while_a_slot_is_due_lose_and_double_nothing(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    (tmp_path / "beat_tasks.py").write_text(MODULE)
    env = _env(tmp_path, redis_url, redis_url, namespace)
    app = App("beatedit", broker=redis_url, key_prefix=namespace)

    @app.task(name="beatedit.tick")
    async def tick() -> None: ...

    worker = _start(tmp_path, env, "worker")
    beats = [_start(tmp_path, env, "beat") for _ in range(2)]
    edits: list[float] = []
    try:
        async with app:
            await _wait_started(tmp_path, 2)
            await app.schedules.add("ed", task="beatedit.tick", every=1)
            added = time.time()
            await asyncio.sleep(3.5)
            edits.append(await _at_boundary(2))  # slot due now under every=1 (and every=2)
            await app.schedules.change("ed", every=2)
            await asyncio.sleep(4.2)
            edits.append(await _at_boundary(1))  # a slot of every=1 only, or of both
            await app.schedules.change("ed", cron="*/3 * * * * *")  # seconds first
            await asyncio.sleep(5.0)
            edits.append(await _at_boundary(3))  # due under the cron
            await app.schedules.pause("ed")
            await asyncio.sleep(3.0)
            edits.append(await _at_boundary(3))
            await app.schedules.resume("ed")
            await asyncio.sleep(5.0)
            ended = time.time()
            skipped = (await app.schedules.get("ed")).skipped
            codes = [await asyncio.to_thread(stop, b) for b in beats]
            await _ran_every_send(tmp_path, "beatedit.tick")  # the last slots ran
    finally:
        for b in beats:
            if b.poll() is None:
                b.kill()
                b.wait()
        worker_code = await asyncio.to_thread(stop, worker)
        await delete_prefix(redis_url, namespace)
    assert codes == [0, 0] and worker_code == 0, _logs(tmp_path)
    entry = Entry(name="ed", task="beatedit.tick", schedule=Every(1))
    by_id = {entry.slot_id(float(s)): s for s in range(int(added) - 2, int(ended) + 3)}
    counts = Counter((tmp_path / "runs").read_text().split())
    assert {i: n for i, n in counts.items() if n > 1} == {}, "a slot ran twice"
    slots = sorted(by_id[i] for i in counts)  # KeyError: a run that is not a slot of "ed"
    e1, e2, e3, e4 = edits
    first = _phase(slots, added, e1)
    assert first == list(range(first[0], first[-1] + 1)), ("every=1", slots, edits)
    second = _phase(slots, e1, e2)
    assert second == [s for s in range(int(e1) + 1, int(e2)) if s % 2 == 0], ("every=2", slots)
    third = _phase(slots, e2, e3)
    assert third == [s for s in range(int(e2) + 1, int(e3)) if s % 3 == 0], (slots, _logs(tmp_path))
    assert _phase(slots, e3, e4) == [], ("paused", slots)
    fourth = _phase(slots, e4, ended - 1)
    assert fourth == [s for s in range(int(e4) + 1, int(ended - 1)) if s % 3 == 0], slots
    # at each edit instant the due slot ran at most once, under the old or the new schedule
    assert all(s % 1 == 0 for s in slots)
    assert skipped.get("paused", 0) >= 1, skipped  # the paused slots are counted, not silent
