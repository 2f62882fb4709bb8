"""Real Celery processes beside real `aiotask worker` processes, on the shared servers.

Both apps name their tasks alike (`proj.*`) and share one queue, `<namespace>.celery`. Every
task id a test makes starts with the namespace, so Celery's `celery-task-meta-<id>` keys are
removed by the namespace clean-up with aiotask's own keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

CELERY_SIDE = textwrap.dedent(
    """
    import os, time
    import redis
    from celery import Celery

    NS = os.environ["TEST_NS"]
    app = Celery("proj", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_REDIS"])
    app.conf.update(
        task_default_queue=NS + ".celery",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        worker_prefetch_multiplier=4,
        broker_transport_options={"visibility_timeout": float(os.environ.get("TEST_VT", "3600"))},
    )
    counter = redis.Redis.from_url(os.environ["TEST_REDIS"])

    @app.task(name="proj.add")
    def add(x, y):
        return x + y

    @app.task(name="proj.mul")
    def mul(x, y):
        return x * y

    @app.task(name="proj.fail")
    def fail(message):
        raise ValueError(message)

    @app.task(name="proj.count")
    def count(key):
        counter.hincrby(NS + ":runs", key, 1)
        counter.hincrby(NS + ":by", "celery", 1)
        return key

    @app.task(name="proj.where")
    def where():
        return "celery"
    """
)

AIOTASK_SIDE = textwrap.dedent(
    """
    import os
    from redis.asyncio import Redis
    from aiotask import App

    NS = os.environ["TEST_NS"]
    app = App(
        "proj",
        broker=os.environ["TEST_BROKER"],
        backend=os.environ["TEST_REDIS"],
        celery_compat=True,
        key_prefix=NS,
        default_queue=NS + ".celery",
        shutdown_grace=10.0,
    )
    _counter = []

    def counter():
        if not _counter:
            _counter.append(Redis.from_url(os.environ["TEST_REDIS"]))
        return _counter[0]

    @app.task(name="proj.add")
    async def add(x, y):
        return x + y

    @app.task(name="proj.mul")
    async def mul(x, y):
        return x * y

    @app.task(name="proj.fail")
    async def fail(message):
        raise ValueError(message)

    @app.task(name="proj.count")
    async def count(key):
        await counter().hincrby(NS + ":runs", key, 1)
        await counter().hincrby(NS + ":by", "aiotask", 1)
        return key

    @app.task(name="proj.where")
    async def where():
        return "aiotask"
    """
)


def write_apps(directory: Path) -> None:
    (directory / "celery_side.py").write_text(CELERY_SIDE)
    (directory / "aiotask_side.py").write_text(AIOTASK_SIDE)


def env_for(directory: Path, ns: str, broker: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(
        TEST_NS=ns, TEST_BROKER=broker, TEST_REDIS=redis_url, PYTHONPATH=str(directory), **extra
    )
    return env


def _spawn(argv: list[str], directory: Path, env: dict[str, str], marker: str) -> Worker:
    """Start a worker with its log in a file (a pipe nobody reads would fill and stall it)
    and return once the log shows `marker`."""
    log = directory / f"{argv[3] if argv[2] == 'celery' else 'aiotask'}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, cwd=directory, env=env, stderr=out, stdout=subprocess.DEVNULL, text=True
        )
    worker = Worker(proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if marker in worker.log():
            return worker
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("worker did not start:\n" + worker.log()[-4000:])


class Worker:
    """A worker process and its log file."""

    def __init__(self, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_celery_worker(directory: Path, env: dict[str, str], ns: str) -> Worker:
    """`celery worker` (threads pool, no mingle/gossip/heartbeat/remote control) on the queue."""
    argv = [sys.executable, "-m", "celery", "-A", "celery_side", "worker", "-Q", ns + ".celery"]
    argv += ["-P", "threads", "-c", "4", "-n", f"{ns}@%h", "-l", "INFO"]
    argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return _spawn(argv, directory, env, " ready.")


def start_aiotask_worker(directory: Path, env: dict[str, str], ns: str) -> Worker:
    argv = [sys.executable, "-m", "aiotask", "worker", "-A", "aiotask_side:app"]
    argv += ["-Q", ns + ".celery", "-l", "INFO", "-c", "8"]
    return _spawn(argv, directory, env, " ready")


def stop(worker: Worker, timeout: float = 30) -> str:
    """SIGTERM (a warm shutdown for both kinds), wait; returns its log."""
    proc = worker.proc
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return worker.log()


def run_producer(directory: Path, env: dict[str, str], code: str, timeout: float = 120) -> str:
    """Run Celery producer code (with `app`, the tasks and NS imported) in its own process;
    returns its stdout. Fails with its stderr when it exits non-zero."""
    script = "from celery_side import *\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout
