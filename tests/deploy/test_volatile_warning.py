"""The Redis persistence warning: once when a worker starts, never for producers or the CLI.

Each run is its own process (the warning is remembered per process), against a private
redis-server with appendonly=no, as the Debian default is.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.procs import worker_env, write_tasks
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

WARNING = "has appendonly=no"
CALL = [sys.executable, "-m", "aiotask", "call", "-A", "proc_tasks:app", "proc.add"]


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_producer_cli_calls_do_not_warn(tmp_path: Path, volatile_redis: PrivateRedis) -> None:
    env = worker_env(write_tasks(tmp_path), volatile_redis.url)
    for _ in range(2):
        sent = subprocess.run(
            [*CALL, "--args", "[1, 2]"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert WARNING not in sent.stderr


def test_worker_warns_once_at_start(tmp_path: Path, volatile_redis: PrivateRedis) -> None:
    env = worker_env(write_tasks(tmp_path), volatile_redis.url)
    env["AIOTASK_WORKER_HEARTBEAT_INTERVAL"] = "0.2"  # many heartbeats, still one warning
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "proc_tasks:app", "-l", "INFO"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if " ready" in line:
                break
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = "".join(seen) + rest
    assert proc.returncode == 0, log
    assert log.count(WARNING) == 1, log
