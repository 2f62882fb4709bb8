"""The shipped systemd unit: validated with systemd-analyze when present, stop semantics emulated.

systemd does not run here, so its stop is replayed on a worker process as the unit says:
KillSignal to the main process only (KillMode=mixed), then, after TimeoutStopSec, SIGKILL to
every process of the unit (here: the worker's session / process group).
"""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests.deploy._apps import DEPLOY, STOP_MARGIN, marks, write_app

if TYPE_CHECKING:
    from pathlib import Path

UNIT = DEPLOY / "systemd" / "aiotask-worker.service"
GRACE = 3


def service() -> configparser.SectionProxy:
    parser = configparser.RawConfigParser(strict=False)  # systemd allows repeated keys
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser["Service"]


def environment() -> dict[str, str]:
    pairs = [
        line.split("=", 2)[1:]
        for line in UNIT.read_text().splitlines()
        if line.startswith("Environment=")
    ]
    return dict(pairs)


def test_unit_keeps_the_sizing_rule_and_stop_semantics() -> None:
    svc = service()
    grace = float(environment()["AIOTASK_SHUTDOWN_GRACE"])
    assert int(svc["TimeoutStopSec"]) >= grace + STOP_MARGIN
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["KillMode"] == "mixed"
    assert svc["Type"] in {"exec", "notify"}
    assert svc["ExecStart"].split()[1:3] == ["worker", "-A"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "aiotask-worker.service"
    aiotask_bin = os.path.join(os.path.dirname(sys.executable), "aiotask")
    unit.write_text(UNIT.read_text().replace("/srv/app/.venv/bin/aiotask", aiotask_bin))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # and it does complain about a broken key, so the check above can fail
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("KillMode=", "KilMode="))
    complaint = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, check=False
    )
    assert "KilMode" in complaint.stderr


def start(tmp: Path, broker: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(
        AIOTASK_BROKER_URL=broker,
        AIOTASK_SHUTDOWN_GRACE=str(GRACE),
        AIOTASK_WORKER_HEARTBEAT_INTERVAL="0.5",
        AIOTASK_WORKER_LOST_AFTER="2",
        PYTHONPATH=str(tmp),
        TEST_LOG_DIR=str(tmp / "logs"),
    )
    cmd = [sys.executable, "-m", "aiotask", "worker", "-A", "deploy_tasks:app", "-P", "1"]
    return subprocess.Popen(
        cmd, cwd=tmp, env=env, start_new_session=True, stderr=subprocess.DEVNULL
    )


def systemd_stop(proc: subprocess.Popen[bytes], timeout_stop: float) -> tuple[int, bool]:
    """KillSignal to the main PID, SIGKILL to the group after TimeoutStopSec: (code, killed)."""
    proc.send_signal(signal.SIGTERM)
    killed = False
    try:
        proc.wait(timeout_stop)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = True
        proc.wait()
    return proc.returncode, killed


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def _started(tmp: Path, key: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while marks(tmp, "started").count(key) < count:
        assert time.monotonic() < deadline, f"{key} did not start"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_stop_within_grace_and_over_grace(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/broker.db"
    write_app(tmp_path)
    timeout_stop = GRACE + STOP_MARGIN  # the unit's rule
    async with App("deploy", broker=broker) as app:
        worker = start(tmp_path, broker)
        short = await app.send_task("deploy.slow", args=["short", 1.0])
        await _started(tmp_path, "short")
        code, killed = await asyncio.to_thread(systemd_stop, worker, timeout_stop)
        assert (code, killed) == (0, False)
        assert await app.AsyncResult(short.id).get(timeout=5) == "short"
        assert await asyncio.to_thread(group_gone, worker.pid)

        worker = start(tmp_path, broker)
        long = await app.send_task("deploy.slow", args=["long", 6.0])
        await _started(tmp_path, "long")
        code, killed = await asyncio.to_thread(systemd_stop, worker, timeout_stop)
        assert (code, killed) == (1, False)  # handed back before TimeoutStopSec
        assert "long" not in marks(tmp_path, "finished")
        assert group_gone(worker.pid), "a pool child outlived the worker"

        worker = start(tmp_path, broker)
        try:
            assert await app.AsyncResult(long.id).get(timeout=30) == "long"
            assert marks(tmp_path, "started").count("long") == 2
        finally:
            await asyncio.to_thread(systemd_stop, worker, timeout_stop)


@pytest.mark.slow
async def test_timeout_shorter_than_grace_kills_and_the_task_comes_back(tmp_path: Path) -> None:
    """The misconfiguration the sizing rule prevents: SIGKILL mid-task, nothing handed back;
    the message returns once the dead worker's heartbeat lapses and runs again."""
    broker = f"sqlite:///{tmp_path}/broker.db"
    write_app(tmp_path)
    async with App("deploy", broker=broker) as app:
        worker = start(tmp_path, broker)
        result = await app.send_task("deploy.slow", args=["cut", 4.0])
        await _started(tmp_path, "cut")
        code, killed = await asyncio.to_thread(systemd_stop, worker, 1.0)
        assert killed and code == -signal.SIGKILL
        assert group_gone(worker.pid)
        worker = start(tmp_path, broker)
        try:
            assert await app.AsyncResult(result.id).get(timeout=40) == "cut"
            assert marks(tmp_path, "started").count("cut") == 2
        finally:
            await asyncio.to_thread(systemd_stop, worker, GRACE + STOP_MARGIN)
