"""A result-backend outage in the middle of a run: the worker waits it out and loses nothing.

The worker's results live on a private redis-server that is killed for about 10 seconds while
chains and chords run (the broker is a SQLite file, untouched). The settler retries the stage
that failed for up to `broker_unreachable_timeout` (60 s), so the worker survives, every task
completes, and every follow-up (chain step, chord body) is published once: each runs once.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from typing import TYPE_CHECKING

from aiotask import App
from aiotask.canvas import chord, signature
from tests.procs import lines, start_worker, stop, worker_env

if TYPE_CHECKING:
    from pathlib import Path

    from tests.servers import PrivateRedis

OUTAGE = 10.0
CHAINS = 12
CHORDS = 3
TASKS = textwrap.dedent(
    """
    import asyncio, os
    from aiotask import App

    app = App("outage")

    @app.task(name="outage.step")
    async def step(key: str) -> str:
        await asyncio.sleep(0.3)
        with open(os.path.join(os.environ["TEST_LOG_DIR"], "runs"), "a") as f:
            f.write(key + "\\n")
        return key
    """
)


def step(app: App, key: str) -> object:
    return signature("outage.step", (key,), app=app, immutable=True)


async def test_worker_waits_out_a_backend_outage_and_publishes_follow_ups_once(
    tmp_path: Path, redis_server: PrivateRedis
) -> None:
    (tmp_path / "proc_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    broker = f"sqlite:///{tmp_path}/broker.db"
    env = worker_env(tmp_path, broker, AIOTASK_RESULT_BACKEND=redis_server.url)
    worker = start_worker(tmp_path, env, "-c", "4")
    expected: list[str] = []
    try:
        async with App("outage", broker=broker, backend=redis_server.url) as app:
            results = []
            for c in range(CHAINS):
                keys = [f"chain{c}-{n}" for n in range(3)]
                expected += keys
                flow = step(app, keys[0]) | step(app, keys[1]) | step(app, keys[2])  # type: ignore[operator]
                results.append(await flow.send())
            for c in range(CHORDS):
                keys = [f"chord{c}-{n}" for n in range(3)]
                expected += [*keys, f"chord{c}-body", f"chord{c}-after"]
                header = [step(app, k) for k in keys]
                flow = chord(header, step(app, f"chord{c}-body")) | step(app, f"chord{c}-after")  # type: ignore[arg-type,operator]
                results.append(await flow.send())
            deadline = time.monotonic() + 20
            while len(lines(tmp_path, "runs")) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            redis_server.kill()  # mid-run: tasks keep finishing, their results cannot be stored
            await asyncio.sleep(OUTAGE)
            assert worker.poll() is None, "the worker gave up during a 10 s backend outage"
            redis_server.start()  # same port, same append-only file
            for r in results:
                await r.get(timeout=60)
        assert worker.poll() is None
    finally:
        code = stop(worker)
    assert code == 0
    runs = Counter(lines(tmp_path, "runs"))
    assert sorted(runs) == sorted(expected)
    assert {k: n for k, n in runs.items() if n != 1} == {}  # each follow-up published once
