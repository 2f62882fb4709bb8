"""deploy/probe.py, the exec probe the Kubernetes and compose examples use, on a real worker."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from tests.deploy._apps import DEPLOY
from tests.procs import start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

PROBE = DEPLOY / "probe.py"


def probe(*args: str, broker: str = "sqlite:///x.db") -> int:
    env = {"PATH": os.environ.get("PATH", ""), "AIOTASK_BROKER_URL": broker}
    return subprocess.run(
        [sys.executable, str(PROBE), *args], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_probe_follows_the_worker(tmp_path: Path) -> None:
    env = worker_env(write_tasks(tmp_path), f"sqlite:///{tmp_path}/b.db")
    worker = start_worker(tmp_path, env, "-c", "2", "-P", "1")
    pid = str(worker.pid)
    try:
        assert probe("live", "--pid", pid) == 0
        assert probe("ready", "--pid", pid) == 0
        # a broker whose port refuses connections: alive but not ready
        assert probe("ready", "--pid", pid, broker="redis://127.0.0.1:1/0") == 1
        assert probe("live", "--pid", pid, broker="redis://127.0.0.1:1/0") == 0
        # found without --pid (the container case: search /proc)
        spec = importlib.util.spec_from_file_location("aiotask_probe", PROBE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert worker.pid in module.find_workers()
        # stopped (SIGSTOP): not alive; continued: alive again
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            assert probe("live", "--pid", pid) == 1
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert probe("live", "--pid", pid) == 0
    finally:
        assert stop(worker) == 0
    assert probe("live", "--pid", pid) == 1
