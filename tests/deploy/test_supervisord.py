"""The shipped supervisord program, run by a real supervisord (from the dev extra).

The program section is deploy/supervisor/aiotask-worker.conf with only the site-specific keys
replaced (command, directory, user, environment, log file); the stop keys are the shipped ones
except stopwaitsecs, which keeps the shipped rule (shutdown_grace + 15) for a short grace.
startsecs is 1 instead of the shipped 5: each start (and `supervisorctl start`) waits that
long for RUNNING, and nothing here depends on it (the sizing test checks the shipped value).
"""

from __future__ import annotations

import asyncio
import configparser
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiotask import App
from tests.deploy._apps import DEPLOY, STOP_MARGIN, marks, release, write_app

BIN = Path(sys.executable).parent
GRACE = 3
PROGRAM = "program:aiotask-worker"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "supervisord").exists(), reason="supervisor not installed"),
]


def shipped() -> configparser.RawConfigParser:
    conf = configparser.RawConfigParser()
    conf.read(DEPLOY / "supervisor" / "aiotask-worker.conf")
    return conf


def test_shipped_program_keeps_the_sizing_rule() -> None:
    program = shipped()[PROGRAM]
    env = dict(kv.split("=", 1) for kv in program["environment"].split(","))
    grace = float(env["AIOTASK_SHUTDOWN_GRACE"].strip('"'))
    assert int(program["stopwaitsecs"]) >= grace + STOP_MARGIN
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == program["killasgroup"] == "true"
    assert int(program["startsecs"]) > 0
    assert program["autorestart"] == "true"


def write_supervisor(tmp: Path, broker: str, extra: str = "") -> Path:
    conf = shipped()
    program = conf[PROGRAM]
    program["command"] = f"{sys.executable} -m aiotask worker -A deploy_tasks:app -l INFO -c 4"
    program["command"] += extra
    program["directory"] = str(tmp)
    del program["user"]  # the test runs as whoever runs it
    program["environment"] = (
        f'AIOTASK_BROKER_URL="{broker}",AIOTASK_SHUTDOWN_GRACE="{GRACE}",'
        f'PYTHONPATH="{tmp}",TEST_LOG_DIR="{tmp / "logs"}"'
    )
    program["stopwaitsecs"] = str(GRACE + STOP_MARGIN)
    program["startsecs"] = "1"
    program["stdout_logfile"] = str(tmp / "worker.log")
    conf["unix_http_server"] = {"file": str(tmp / "supervisor.sock")}
    conf["supervisord"] = {
        "nodaemon": "true",
        "logfile": str(tmp / "supervisord.log"),
        "pidfile": str(tmp / "supervisord.pid"),
        "childlogdir": str(tmp),
    }
    conf["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
    }
    conf["supervisorctl"] = {"serverurl": f"unix://{tmp / 'supervisor.sock'}"}
    path = tmp / "supervisord.conf"
    with path.open("w") as f:
        conf.write(f)
    return path


def ctl(conf: Path, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def spawn_supervisord(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "supervisord"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def running(conf: Path) -> bool:
    return "RUNNING" in ctl(conf, "status")


def shutting_down(tmp: Path) -> int:
    """How many warm shutdowns the program's log shows so far (one per worker process)."""
    path = tmp / "worker.log"
    return path.read_text().count("warm shutdown") if path.exists() else 0


async def test_supervisorctl_stop_is_a_warm_shutdown_and_over_grace_hands_back(
    tmp_path: Path,
) -> None:
    broker = f"sqlite:///{tmp_path}/broker.db"
    conf = write_supervisor(write_app(tmp_path), broker)
    sup = spawn_supervisord(conf)
    log = tmp_path / "supervisord.log"
    try:
        assert await asyncio.to_thread(wait_for, lambda: running(conf), 30), ctl(conf, "status")
        async with App("deploy", broker=broker) as app:
            # 1. a task shorter than the grace: finishes, worker exits 0
            short = await app.send_task("deploy.hold", args=["short"])
            assert await asyncio.to_thread(
                wait_for, lambda: "short" in marks(tmp_path, "started"), 20
            )
            stop = asyncio.ensure_future(asyncio.to_thread(ctl, conf, "stop", "aiotask-worker:*"))
            # released once the worker is in its warm shutdown: still running when it began
            assert await asyncio.to_thread(wait_for, lambda: shutting_down(tmp_path) >= 1, 20)
            release(tmp_path, "short")
            out = await stop
            assert "stopped" in out, out
            assert marks(tmp_path, "finished") == ["short"]
            assert await app.AsyncResult(short.id).get(timeout=5) == "short"
            assert "aiotask-worker_00 (exit status 0)" in log.read_text(), log.read_text()

            # 2. a task longer than the grace: handed back before stopwaitsecs, exit 1 ...
            await asyncio.to_thread(ctl, conf, "start", "aiotask-worker:*")
            long = await app.send_task("deploy.hold", args=["long"])  # held past the grace
            assert await asyncio.to_thread(
                wait_for, lambda: "long" in marks(tmp_path, "started"), 20
            )
            stopping = time.monotonic()
            out = await asyncio.to_thread(ctl, conf, "stop", "aiotask-worker:*")
            took = time.monotonic() - stopping
            text = log.read_text()
            assert "aiotask-worker_00 (exit status 1)" in text, text
            assert "SIGKILL" not in text, text
            assert took < GRACE + STOP_MARGIN, f"stop took {took:.1f}s: supervisord killed it"
            assert "long" not in marks(tmp_path, "finished")
            worker_log = (tmp_path / "worker.log").read_text()
            assert "grace period over: abandoning 1 running tasks" in worker_log, worker_log

            # ... and it runs again, from the start, on the next start
            release(tmp_path, "long")  # this time it finishes at once
            await asyncio.to_thread(ctl, conf, "start", "aiotask-worker:*")
            assert await app.AsyncResult(long.id).get(timeout=40) == "long"
            assert marks(tmp_path, "started").count("long") == 2
        await asyncio.to_thread(ctl, conf, "stop", "aiotask-worker:*")
    finally:
        if sup.poll() is None:
            os.kill(sup.pid, signal.SIGTERM)
            try:
                sup.wait(30)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait()


async def test_workers_2_under_supervisord_stop_warm_with_every_child(tmp_path: Path) -> None:
    """`--workers 2`: supervisord sees one program (the parent); `stop` reaches both children
    through the parent, each finishes its running task, the program exits 0, none is left."""
    broker = f"sqlite:///{tmp_path}/broker.db"
    conf = write_supervisor(write_app(tmp_path), broker, " --workers 2 -n multi")
    sup = spawn_supervisord(conf)
    log = tmp_path / "supervisord.log"
    worker_log = tmp_path / "worker.log"
    try:
        assert await asyncio.to_thread(wait_for, lambda: running(conf), 30), ctl(conf, "status")
        ready = lambda: worker_log.exists() and worker_log.read_text().count(" ready") >= 2  # noqa: E731
        assert await asyncio.to_thread(wait_for, ready, 30), worker_log.read_text()
        async with App("deploy", broker=broker) as app:
            keys = [f"k{i}" for i in range(4)]
            sent = [await app.send_task("deploy.hold", args=[key]) for key in keys]
            assert await asyncio.to_thread(
                wait_for, lambda: len(marks(tmp_path, "started")) == 4, 20
            )
            stopping = asyncio.ensure_future(
                asyncio.to_thread(ctl, conf, "stop", "aiotask-worker:*")
            )
            # released once both children are in their warm shutdown, running their tasks
            assert await asyncio.to_thread(wait_for, lambda: shutting_down(tmp_path) >= 2, 20)
            release(tmp_path, *keys)
            out = await stopping
            assert "stopped" in out, out
            assert sorted(marks(tmp_path, "finished")) == [f"k{i}" for i in range(4)]
            assert [await app.AsyncResult(r.id).get(timeout=5) for r in sent] == [
                f"k{i}" for i in range(4)
            ]
        text = log.read_text()
        assert "aiotask-worker_00 (exit status 0)" in text, text
        assert "SIGKILL" not in text, text
        worker_text = worker_log.read_text()
        assert "workers:      2 processes: multi-1 .. multi-2" in worker_text
        assert worker_text.count("warm shutdown") >= 2, worker_text
        assert "cold shutdown:" not in worker_text, worker_text  # each child got ONE signal
    finally:
        if sup.poll() is None:
            os.kill(sup.pid, signal.SIGTERM)
            try:
                sup.wait(30)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait()
