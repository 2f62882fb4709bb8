"""A worker started before its broker waits for it (broker_connection_retry_on_startup).

Before: the worker exited 1 within a fraction of a second, so supervisord (startsecs,
startretries) marked it FATAL and never started it again. The broker here is a private
redis-server on a port where nothing listens until a few seconds after the worker started.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests.faults.test_redis_auth import PasswordRedis
from tests.procs import stop, worker_env, write_tasks
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


def _spawn(directory: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "proc_tasks:app", "-l", "INFO"],
        cwd=directory,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """stderr lines up to (and with) the first that contains `needle`; all of them on EOF."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            break
    return seen


async def test_worker_waits_for_a_broker_that_comes_up_later(tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path)
    env = worker_env(write_tasks(tmp_path), redis.url)
    proc = _spawn(tmp_path, env)
    later = threading.Timer(4.0, redis.start)
    later.start()
    try:
        seen = _read_until(proc, " ready", 40)
        log = "".join(seen)
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log}"
        assert "cannot connect to the broker" in log, log
        assert "broker_connection_startup_timeout" in log, log
        assert "connected to the broker after" in log, log
        async with App("proc", broker=redis.url) as app:
            result = await app.send_task("proc.add", args=[2, 3])
            assert await app.AsyncResult(result.id).get(timeout=20) == 5
        assert stop(proc) == 0
    finally:
        later.cancel()
        later.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        redis.kill()


def test_retry_off_exits_at_once_and_timeout_bounds_the_wait(tmp_path: Path) -> None:
    """With the setting off the old behaviour stays available; the timeout bounds the retries."""
    redis = PrivateRedis(tmp_path)  # never started: nothing listens on its port
    write_tasks(tmp_path)
    off = worker_env(tmp_path, redis.url, AIOTASK_BROKER_CONNECTION_RETRY_ON_STARTUP="false")
    proc = _spawn(tmp_path, off)
    assert proc.wait(30) == 1
    assert proc.stderr is not None
    assert "cannot connect to the broker" not in proc.stderr.read()
    proc.stderr.close()

    bounded = worker_env(tmp_path, redis.url, AIOTASK_BROKER_CONNECTION_STARTUP_TIMEOUT="2")
    proc = _spawn(tmp_path, bounded)
    assert proc.wait(30) == 1
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert err.count("cannot connect to the broker") >= 2, err
    assert "gave up connecting at start after 2s" in err, err


def test_sigterm_while_waiting_exits_zero(tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path)  # never started
    proc = _spawn(tmp_path, worker_env(write_tasks(tmp_path), redis.url))
    try:
        assert "cannot connect" in "".join(_read_until(proc, "cannot connect", 30))
    finally:
        code = stop(proc, timeout=10)
    assert code == 0


def test_refused_credentials_are_not_retried(tmp_path: Path) -> None:
    """Waiting cannot fix a wrong password: the worker says so and exits 1 at once."""
    redis = PasswordRedis(tmp_path)
    redis.start()
    try:
        url = f"redis://:wrong-Pw-2@127.0.0.1:{redis.port}/0"
        proc = _spawn(tmp_path, worker_env(write_tasks(tmp_path), url))
        assert proc.wait(30) == 1
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    finally:
        redis.kill()
    assert "refused the credentials" in err, err
    assert "cannot connect to the broker" not in err, err
    assert "wrong-Pw-2" not in err
