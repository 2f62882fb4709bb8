"""`aiotask worker --workers N`: a real supervising parent and its real child processes.

Which child ran a task is recorded by the task itself (the child number from the environment
and the pid), outside aiotask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests.procs import run_cli

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TASKS = textwrap.dedent(
    """
    import asyncio, os
    from aiotask import App

    app = App("multi", shutdown_grace=20.0)
    LOG = os.environ["TEST_LOG_DIR"]

    @app.task(name="multi.work")
    async def work(key: str, seconds: float) -> str:
        child = os.environ.get("AIOTASK_WORKER_CHILD", "?")
        with open(os.path.join(LOG, "started"), "a") as f:
            f.write(f"{key} {child} {os.getpid()}\\n")
        await asyncio.sleep(seconds)
        with open(os.path.join(LOG, "finished"), "a") as f:
            f.write(f"{key} {child} {os.getpid()}\\n")
        return key
    """
)
BROKEN = "import os\nif os.environ.get('AIOTASK_WORKER_CHILD'):\n    raise RuntimeError('boom')\n"


class Supervised:
    """`aiotask worker --workers N` as a process; its stderr (all children's too) is read on a
    thread all along, so a full pipe never stalls it."""

    def __init__(self, directory: Path, env: dict[str, str], n: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiotask", "worker", "-A", "multi_tasks:app", "-l", "INFO",
             "--workers", str(n), "-n", "multi", *args],
            cwd=directory, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self.stream = self.proc.stderr
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self.stream:
                self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {count} x {needle!r}:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.thread.join(5)
            self.stream.close()


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def env(tmp_path: Path, broker: str, namespace: str) -> dict[str, str]:
    (tmp_path / "multi_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    base.update(
        AIOTASK_BROKER_URL=broker,
        AIOTASK_KEY_PREFIX=namespace,
        AIOTASK_VISIBILITY_TIMEOUT="3",
        TEST_LOG_DIR=str(tmp_path / "logs"),
        PYTHONPATH=str(tmp_path),
    )
    return base


def rows(directory: Path, kind: str) -> list[list[str]]:
    path = directory / "logs" / kind
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


async def test_two_children_share_the_work_show_in_status_and_stop_warm(
    tmp_path: Path, env: dict[str, str], broker: str, namespace: str
) -> None:
    sup = Supervised(tmp_path, env, 2, "-c", "2", "--prefetch", "2")
    try:
        sup.wait_for(" ready", 2)
        assert "workers:      2 processes: multi-1 .. multi-2" in sup.text()
        status = await asyncio.to_thread(run_cli, tmp_path, env, "status", "-A",
                                         "multi_tasks:app", "--json")  # fmt: skip
        names = {w["name"] for w in json.loads(status.stdout)["workers"] if w["state"] == "online"}
        assert {"multi-1", "multi-2"} <= names, status.stdout + status.stderr
        ping = await asyncio.to_thread(run_cli, tmp_path, env, "inspect", "-A",
                                       "multi_tasks:app", "ping", "--json")  # fmt: skip
        assert {"multi-1", "multi-2"} <= set(json.loads(ping.stdout)), ping.stdout + ping.stderr
        async with App("multi", broker=broker, key_prefix=namespace) as app:
            sent = [await app.send_task("multi.work", args=[f"k{i}", 0.2]) for i in range(30)]
            results = [await app.AsyncResult(r.id).get(timeout=60) for r in sent]
        assert sorted(results) == sorted(f"k{i}" for i in range(30))
        children = {row[1] for row in rows(tmp_path, "finished")}
        assert children == {"1", "2"}, rows(tmp_path, "finished")  # both did work
        pids = {int(row[2]) for row in rows(tmp_path, "finished")}
    finally:
        code = await asyncio.to_thread(sup.stop, signal.SIGTERM)
    assert code == 0, sup.text()
    assert sup.text().count("warm shutdown") >= 2, sup.text()
    for pid in pids:  # every child has gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_killed_child_is_restarted_and_its_tasks_redelivered(
    tmp_path: Path, env: dict[str, str], broker: str, namespace: str
) -> None:
    sup = Supervised(tmp_path, env, 2, "-c", "3", "--prefetch", "3")
    keys = [f"k{i}" for i in range(24)]
    try:
        sup.wait_for(" ready", 2)
        async with App("multi", broker=broker, key_prefix=namespace) as app:
            sent = [await app.send_task("multi.work", args=[k, 1.0]) for k in keys]
            ok = await asyncio.to_thread(
                wait_until, lambda: {r[1] for r in rows(tmp_path, "started")} == {"1", "2"}, 60
            )
            assert ok, rows(tmp_path, "started")
            victim = next(r for r in rows(tmp_path, "started") if r[1] == "1")
            os.kill(int(victim[2]), signal.SIGKILL)
            sup.wait_for("restarting in", 1)
            sup.wait_for(" ready", 3)  # the replacement child
            results = [await app.AsyncResult(r.id).get(timeout=90) for r in sent]
        assert sorted(results) == sorted(keys)  # nothing lost
        finished = {r[0] for r in rows(tmp_path, "finished")}
        assert finished == set(keys)
        started_by_victim = {r[0] for r in rows(tmp_path, "started") if r[2] == victim[2]}
        done_by_victim = {r[0] for r in rows(tmp_path, "finished") if r[2] == victim[2]}
        redelivered = started_by_victim - done_by_victim
        assert redelivered, "the killed child had tasks in hand"
        restarted = {r[2] for r in rows(tmp_path, "started") if r[1] == "1"} - {victim[2]}
        assert restarted, "the replacement child 1 ran tasks"
    finally:
        code = await asyncio.to_thread(sup.stop, signal.SIGTERM)
    assert code == 0, sup.text()


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
def test_a_child_failing_at_import_makes_the_parent_give_up(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # the module imports in the parent (banner) but raises in every child
    (tmp_path / "multi_tasks.py").write_text(BROKEN + TASKS)
    sup = Supervised(tmp_path, env, 2)
    try:
        code = sup.proc.wait(90)
    finally:
        sup.stop()
    assert code == 1, sup.text()
    assert "keeps dying at start" in sup.text(), sup.text()
    assert "RuntimeError: boom" in sup.text()


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
async def test_sigquit_is_a_cold_shutdown_of_every_child(
    tmp_path: Path, env: dict[str, str], broker: str, namespace: str
) -> None:
    sup = Supervised(tmp_path, env, 2, "-c", "1", "--prefetch", "1")
    try:
        sup.wait_for(" ready", 2)
        async with App("multi", broker=broker, key_prefix=namespace) as app:
            for i in range(2):
                await app.send_task("multi.work", args=[f"long{i}", 30.0])
            assert await asyncio.to_thread(
                wait_until, lambda: len(rows(tmp_path, "started")) == 2, 30
            )
    finally:
        code = await asyncio.to_thread(sup.stop, signal.SIGQUIT)
    assert code == 1, sup.text()  # cold: the running tasks were abandoned (redelivered later)
    assert sup.text().count("cold shutdown:") == 2, sup.text()
    assert rows(tmp_path, "finished") == []
