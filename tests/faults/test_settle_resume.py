"""A flush that fails after publishing resumes where it failed: follow-ups go out once.

The fault is injected at the stage right after the publish (marking the chord sent), as a
server error the settler retries (AIOTASK_TEST_CRASH_AT=chord-published:error). A retry that
started the flush over would publish the batch's follow-ups (here: the header tasks' links and
the chord body) a second time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.canvas import chord
from aiotask.testing import start_worker
from aiotask.worker.settle import CRASH_AT_ENV

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_failure_after_the_publish_does_not_publish_again(
    kind: str, tmp_path: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/resume.db"
    app = App(f"resume-{namespace}", broker=url)
    runs: Counter[str] = Counter()

    @app.task(name="r.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="r.total")
    async def total(values: list[int]) -> int:
        runs["total"] += 1
        return sum(values)

    @app.task(name="r.link")
    async def link(value: int) -> None:
        runs[f"link:{value}"] += 1

    header = []
    for i in range(4):
        sig = add.si(i, i)
        sig.link(link.s())
        header.append(sig)
    monkeypatch.setenv(CRASH_AT_ENV, "chord-published:error")
    async with start_worker(app, concurrency=8, prefetch=32) as worker:
        result = await chord(header, total.s()).send()
        async with asyncio.timeout(30):
            while runs["total"] == 0:  # published, then the next stage fails (and is retried)
                await asyncio.sleep(0.02)
        monkeypatch.delenv(CRASH_AT_ENV)
        assert await result.get(timeout=30) == 12
        async with asyncio.timeout(30):
            while worker.dispatcher.processed < 4 + 4 + 1:  # headers, links, body
                await asyncio.sleep(0.02)
    async with app:
        try:
            async with asyncio.timeout(1.5):
                left = await app.broker.receive([app.conf.default_queue], 10)
        except TimeoutError:
            left = []
    assert left == []
    assert runs == Counter({"total": 1, "link:0": 1, "link:2": 1, "link:4": 1, "link:6": 1})
