"""`aiotask worker` runs without the CLI framework in memory; user code calling main() does not
re-execute (what it set up in-process would be lost)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.procs import start_worker, stop, worker_env, write_tasks


def test_the_worker_process_holds_no_cli_framework(tmp_path: Path) -> None:
    env = worker_env(write_tasks(tmp_path), f"sqlite:///{tmp_path}/w.db")
    proc = start_worker(tmp_path, env, "-c", "2", "-P", "1")  # `python -m aiotask worker`
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"aiotask.cli._run_worker" in cmdline  # same PID, a fresh interpreter
        # typer parses with pydantic (a compiled extension, so it shows in the mappings)
        assert "pydantic_core" not in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        assert stop(proc) == 0


def test_main_called_from_user_code_does_not_reexecute(tmp_path: Path) -> None:
    code = "import aiotask.cli._run_worker as r; print(r.can_reexec())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "False", done.stderr
    as_command = subprocess.run(
        [sys.executable, "-m", "aiotask", "--version"], capture_output=True, text=True, check=False
    )
    assert as_command.returncode == 0 and as_command.stdout.startswith("aiotask ")


def test_a_sigterm_while_the_new_interpreter_starts_is_a_warm_shutdown(tmp_path: Path) -> None:
    """Before its handlers exist the worker holds the signal (blocked across the exec), not -15."""
    env = worker_env(write_tasks(tmp_path), f"sqlite:///{tmp_path}/w.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "proc_tasks:app", "-P", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while b"aiotask.cli._run_worker" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)  # the new interpreter is still importing
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "warm shutdown" in err
