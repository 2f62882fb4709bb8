"""Helpers for tests that run `aiotask worker` as a real OS process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

TASKS_MODULE = textwrap.dedent(
    """
    import asyncio, os, time
    from aiotask import App

    app = App("proc", shutdown_grace=20.0)
    LOG = os.environ["TEST_LOG_DIR"]

    def _mark(kind: str, key: str) -> None:
        with open(os.path.join(LOG, kind), "a") as f:
            f.write(key + "\\n")

    @app.task(name="proc.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proc.slow")
    async def slow(key: str, seconds: float) -> str:
        _mark("started", key)
        await asyncio.sleep(seconds)
        _mark("finished", key)
        return key

    @app.task(name="proc.hold")
    async def hold(key: str) -> str:
        # runs until the test calls release(directory, key), at most 120 s: no timing guess
        _mark("started", key)
        gate = os.path.join(LOG, "release-" + key)
        for _ in range(6000):
            if os.path.exists(gate):
                break
            await asyncio.sleep(0.02)
        _mark("finished", key)
        return key

    @app.task(name="proc.cpu")
    def cpu(n: int) -> int:
        return os.getpid()

    @app.task(name="proc.tsum")
    async def tsum(values: list[str]) -> str:
        _mark("body", ",".join(values))
        return "+".join(values)

    @app.task(name="proc.die")
    async def die() -> None:
        _mark("died", "x")
        os._exit(3)  # a poison message: the worker process dies every time it runs this
    """
)


def write_tasks(directory: Path) -> Path:
    (directory / "proc_tasks.py").write_text(TASKS_MODULE)
    (directory / "logs").mkdir(exist_ok=True)
    return directory


def worker_env(directory: Path, broker_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(
        {
            "AIOTASK_BROKER_URL": broker_url,
            "TEST_LOG_DIR": str(directory / "logs"),
            "PYTHONPATH": str(directory),
            **settings,
        }
    )
    return env


def start_worker(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start `aiotask worker` and return once it logs that it is ready."""
    return wait_ready(spawn_worker(directory, env, *args))


def start_workers(
    directory: Path, env: dict[str, str], n: int, *args: str
) -> list[subprocess.Popen[str]]:
    """Start `n` workers at once (their start-ups overlap) and return once each is ready."""
    procs = [spawn_worker(directory, env, *args) for _ in range(n)]
    try:
        return [wait_ready(proc) for proc in procs]
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise


def spawn_worker(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start `aiotask worker` without waiting: the test does something else while it starts
    (its import and connect cost seconds on a loaded machine), then calls wait_ready()."""
    return subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", "-A", "proc_tasks:app", "-l", "INFO", *args],
        cwd=directory,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Return `proc` once it logs that it is ready (kill it and fail if it never does)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if " ready" in line:
            os.set_blocking(proc.stderr.fileno(), False)
            return proc
    proc.kill()
    proc.wait()
    proc.stderr.close()
    raise AssertionError("worker did not start:\n" + "".join(seen))


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal the worker and wait for its exit code; kill it if it hangs (and fail)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return reap(proc, timeout)


def stop_all(
    procs: list[subprocess.Popen[str]], sig: int = signal.SIGTERM, timeout: float = 30
) -> list[int]:
    """`stop` for several workers: all are signalled first, so their shutdowns overlap."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    codes = []
    try:
        for proc in procs:
            codes.append(reap(proc, timeout))
    finally:
        for proc in procs[len(codes) + 1 :]:  # one hung: the rest are not left running
            proc.kill()
            reap(proc, timeout)
    return codes


def reap(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """Wait for an already signalled worker's exit code; kill it if it hangs (and fail).

    Also when the wait is interrupted (pytest-timeout's failure is a BaseException): a worker
    left running would be reported by the next test on this process, as an unraisable
    ResourceWarning from its collected Popen."""
    try:
        return proc.wait(timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


def lines(directory: Path, kind: str) -> list[str]:
    path = directory / "logs" / kind
    return path.read_text().split() if path.exists() else []


def release(directory: Path, *keys: str) -> None:
    """Let the `proc.hold(key)` tasks finish (at once, when they run later)."""
    for key in keys:
        (directory / "logs" / f"release-{key}").touch()


def run_cli(directory: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m aiotask ARGV` to completion in `directory`."""
    return subprocess.run(
        [sys.executable, "-m", "aiotask", *argv],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


_HERE = threading.Lock()  # one in-process command at a time: it swaps env, cwd and sys.stdout


def run_cli_here(
    directory: Path, env: dict[str, str], *argv: str
) -> subprocess.CompletedProcess[str]:
    """`run_cli` inside the test process: the same entry point (`aiotask.cli.main`: parsing,
    error lines, exit codes) against the same store, without a fresh interpreter's imports
    (~0.3 s of CPU per command; the ops tests ran ~60). For tests whose subject is what a
    command says, not its process; the worker stays a real process, and each command family
    keeps real-process runs too.

    Runs on a thread of its own (the command calls asyncio.run) and blocks the caller, so no
    test code runs while os.environ holds `env`; the app module is imported afresh each time.
    """
    from click.testing import CliRunner

    from aiotask.cli import main

    changes: dict[str, str | None] = {k: v for k, v in env.items() if os.environ.get(k) != v}
    changes.update({k: None for k in os.environ if k.startswith("AIOTASK_") and k not in env})
    runner = CliRunner()

    def invoke() -> subprocess.CompletedProcess[str]:
        code: int = 0
        with runner.isolation(env=changes) as (out, err, _):
            try:
                main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
        return subprocess.CompletedProcess(["aiotask", *argv], code, stdout, stderr)

    with _HERE:
        before = os.getcwd()
        os.chdir(directory)
        here = os.getcwd()
        sys.modules.pop("proc_tasks", None)
        pool = ThreadPoolExecutor(1)
        try:
            return pool.submit(invoke).result(timeout=30)
        finally:
            pool.shutdown(wait=False)
            os.chdir(before)
            sys.modules.pop("proc_tasks", None)
            while here in sys.path:  # load_app put the command's directory there
                sys.path.remove(here)


def wait_with_stderr(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for the process to exit; return its exit code and the rest of its stderr.

    stderr is read on a thread while waiting, so a chatty process never blocks on a full pipe.
    Kills the process (and fails) if it has not exited within `timeout`.
    """
    assert proc.stderr is not None
    stream = proc.stderr
    os.set_blocking(stream.fileno(), True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(stream.read()), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(5)
    if reader.is_alive():  # something the worker started still holds the pipe open
        raise AssertionError(f"stderr of pid {proc.pid} stayed open after it exited")
    stream.close()
    return code, "".join(chunks)


class StderrTail:
    """Reads a worker's stderr on a thread all along (a full pipe would block the worker in a
    write) and keeps the last lines to show when a test fails."""

    def __init__(self, proc: subprocess.Popen[str], keep: int = 40) -> None:
        if proc.stderr is None:
            raise AssertionError("the worker's stderr is not a pipe")
        self.stream = proc.stderr
        os.set_blocking(self.stream.fileno(), True)
        self.lines: deque[str] = deque(maxlen=keep)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for line in self.stream:
                self.lines.append(line)
        except (ValueError, OSError):  # the pipe was closed under the reader
            return

    def text(self) -> str:
        return "".join(self.lines)
