"""Real `aiotask beat` processes: three at once (one killed -9 mid-run) send each slot once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from aiotask.beat.entry import Entry
from aiotask.beat.schedule import Every
from tests.procs import stop

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

MODULE = textwrap.dedent(
    """
    import os
    from aiotask import App, TaskContext

    app = App("beatproc")

    # catch_up="all": a beat stalled over a slot on a loaded machine still sends it (with the
    # default "latest" it would send only the newest of two due slots and count one missed)
    @app.periodic(every=1, catch_up="all")
    @app.task(name="beatproc.tick", bind=True)
    async def tick(ctx: TaskContext) -> None:
        with open(os.environ["TEST_RUNS"], "a") as f:
            f.write(ctx.id + "\\n")
    """
)
RUN_FOR = 9.0


def _env(tmp: Path, broker: str, backend: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(
        AIOTASK_BROKER_URL=broker,
        AIOTASK_RESULT_BACKEND=backend,
        AIOTASK_KEY_PREFIX=prefix,
        TEST_RUNS=str(tmp / "runs"),
        PYTHONPATH=str(tmp),
    )
    return env


def _start(tmp: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    """Start a process whose log goes to a file (a pipe nobody reads would fill up)."""
    log = tmp / f"{argv[0]}-{len(list(tmp.glob('*.log')))}.log"
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aiotask", *argv, "-A", "beat_tasks:app", "-l", "INFO"],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            text=True,
        )


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp.glob("*.log")))


def _urls(kind: str, request: pytest.FixtureRequest, tmp: Path) -> tuple[str, str]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp}/beat.db"
        return url, url
    redis = request.getfixturevalue("redis_url")
    if kind == "redis":
        return redis, redis
    return request.getfixturevalue("amqp_url"), redis


@pytest.mark.parametrize("kind", ["sqlite", "redis", "amqp"])
async def test_three_beats_one_killed_send_every_slot_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> None:
    (tmp_path / "beat_tasks.py").write_text(MODULE)
    broker, backend = _urls(kind, request, tmp_path)
    env = _env(tmp_path, broker, backend, namespace)
    worker = _start(tmp_path, env, "worker")
    started = time.time()
    beats = [_start(tmp_path, env, "beat") for _ in range(3)]
    try:
        await _wait_started(tmp_path, 3)  # a loaded machine may take seconds to import
        await asyncio.sleep(RUN_FOR / 2)
        killed_at = time.time()
        beats[0].kill()  # kill -9 one beat mid-run
        beats[0].wait()
        await asyncio.sleep(RUN_FOR / 2)
        codes = [await asyncio.to_thread(stop, b) for b in beats[1:]]
        ended = time.time()
        await _ran_every_send(tmp_path, "beatproc.tick")  # the worker ran the last slots
    finally:
        for b in beats:
            if b.poll() is None:
                b.kill()
                b.wait()
        worker_code = await asyncio.to_thread(stop, worker)
        await _cleanup(kind, broker, backend, namespace)
    assert codes == [0, 0], _logs(tmp_path)
    assert worker_code == 0, _logs(tmp_path)
    entry = Entry(name="beatproc.tick", task="beatproc.tick", schedule=Every(1))
    by_id = {entry.slot_id(float(s)): s for s in range(int(started) - 2, int(ended) + 3)}
    runs = (tmp_path / "runs").read_text().split()
    counts = Counter(runs)
    assert {i: n for i, n in counts.items() if n > 1} == {}, "a slot ran twice\n" + _logs(tmp_path)
    slots = sorted(by_id[i] for i in counts)  # KeyError: a run that is not a slot of ours
    assert slots == list(range(slots[0], slots[-1] + 1)), "a slot was lost"
    # the checked run spans the kill: slots sent before it and after it, with no gap
    assert slots[0] < killed_at - 1 and slots[-1] > killed_at + 2, (slots, killed_at)


async def _cleanup(kind: str, broker: str, backend: str, prefix: str) -> None:
    if kind == "sqlite":
        return
    from tests.contract.conftest import delete_prefix

    await delete_prefix(backend, prefix)
    if kind == "amqp":
        from aiotask.brokers.rabbitmq import RabbitMQBroker
        from aiotask.settings import Settings

        b = RabbitMQBroker(broker, Settings(broker_url=broker, key_prefix=prefix), "beatproc")
        await b.connect()
        try:
            await b.delete_queue("default")
        finally:
            await b.close()


def test_beat_embedded_in_two_workers_sends_each_slot_once(
    tmp_path: Path, sqlite_url: str, namespace: str
) -> None:
    (tmp_path / "beat_tasks.py").write_text(MODULE)
    env = _env(tmp_path, sqlite_url, sqlite_url, namespace)
    workers = [_start(tmp_path, env, "worker", "--beat") for _ in range(2)]
    try:
        # both beats run before the window opens: a fixed 6 s from the spawn left one slot
        # when a loaded machine took 5 s to import the workers (assert 1 >= 3)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (
            sum(" embedded in the worker" in p.read_text() for p in tmp_path.glob("worker-*.log"))
            < 2
        ):
            time.sleep(0.1)
        time.sleep(4.0)
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0], _logs(tmp_path)
    counts = Counter((tmp_path / "runs").read_text().split())
    assert counts, _logs(tmp_path)
    assert max(counts.values()) == 1, "a slot ran twice"
    entry = Entry(name="beatproc.tick", task="beatproc.tick", schedule=Every(1))
    now = int(time.time())
    by_id = {entry.slot_id(float(s)): s for s in range(now - 30, now + 2)}
    slots = sorted(by_id[i] for i in counts)
    assert slots == list(range(slots[0], slots[-1] + 1)), "a slot was lost"
    assert len(slots) >= 3


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_beats_with_clocks_2s_apart_send_every_slot_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> None:
    """Three beats whose clocks are -2 s, 0 and +2 s off: the ahead one sends each slot up to
    2 s early, the others find it claimed; counted by the tasks' own runs."""
    (tmp_path / "beat_tasks.py").write_text(MODULE)
    broker, backend = _urls(kind, request, tmp_path)
    env = _env(tmp_path, broker, backend, namespace)
    worker = _start(tmp_path, env, "worker")
    started = time.time()
    beats = [_start(tmp_path, env, "beat", f"--clock-offset={o}") for o in (-2, 0, 2)]
    try:
        await _wait_started(tmp_path, 3)  # a loaded machine may take seconds to import
        await asyncio.sleep(RUN_FOR)
        codes = [await asyncio.to_thread(stop, b) for b in beats]
        ended = time.time()
        await _ran_every_send(tmp_path, "beatproc.tick")  # the worker ran the last slots
    finally:
        for b in beats:
            if b.poll() is None:
                b.kill()
                b.wait()
        worker_code = await asyncio.to_thread(stop, worker)
        await _cleanup(kind, broker, backend, namespace)
    assert codes == [0, 0, 0], _logs(tmp_path)
    assert worker_code == 0, _logs(tmp_path)
    entry = Entry(name="beatproc.tick", task="beatproc.tick", schedule=Every(1))
    by_id = {entry.slot_id(float(s)): s for s in range(int(started) - 4, int(ended) + 5)}
    counts = Counter((tmp_path / "runs").read_text().split())
    assert {i: n for i, n in counts.items() if n > 1} == {}, "a slot ran twice\n" + _logs(tmp_path)
    slots = sorted(by_id[i] for i in counts)  # KeyError: a run that is not a slot of ours
    assert slots == list(range(slots[0], slots[-1] + 1)), "a slot was lost"
    assert len(slots) >= RUN_FOR - 2, slots
    # the beat 2 s ahead sent slots before their instant on the host clock
    ahead = (tmp_path / "beat-3.log").read_text()
    assert "sent beatproc.tick" in ahead, _logs(tmp_path)


async def _ran_every_send(tmp: Path, task: str, timeout: float = 10.0) -> None:
    """Wait until the worker has run as many tasks as the beats logged sending (at most
    `timeout`; the assertions then say what is missing): no fixed wait for the last slots."""

    def behind() -> bool:
        sent = sum(p.read_text().count(f" sent {task}[") for p in tmp.glob("beat-*.log"))
        runs = tmp / "runs"
        return len(runs.read_text().split() if runs.exists() else []) < sent

    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(behind) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _wait_started(tmp: Path, beats: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = await asyncio.to_thread(lambda: [p.read_text() for p in tmp.glob("beat-*.log")])
        if sum(" started with " in log for log in logs) >= beats:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(_logs(tmp))
