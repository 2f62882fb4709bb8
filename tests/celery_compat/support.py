"""Real Celery processes beside real `aiotask worker` processes, on the shared servers.

Both apps name their tasks alike (`proj.*`) and share one queue, `<namespace>.celery`. Every
task id a test makes starts with the namespace, so Celery's `celery-task-meta-<id>` keys are
removed by the namespace clean-up with aiotask's own keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

from redis import Redis

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
        broker_transport_options={
            "visibility_timeout": float(os.environ.get("TEST_VT", "3600")),
            "global_keyprefix": os.environ.get("TEST_KEYPREFIX", ""),
        },
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

    @app.task(name="proj.slow")
    def slow(key, seconds):
        counter.hincrby(NS + ":started", key, 1)
        deadline = time.monotonic() + seconds  # at most: a test may set NS:release sooner
        while time.monotonic() < deadline and not counter.exists(NS + ":release"):
            time.sleep(0.02)
        counter.hincrby(NS + ":runs", key, 1)
        return key
    """
)

AIOTASK_SIDE = textwrap.dedent(
    """
    import asyncio, os, time
    from redis.asyncio import Redis
    from aiotask import App

    NS = os.environ["TEST_NS"]
    app = App(
        "proj",
        broker=os.environ.get("TEST_AIOTASK_BROKER") or os.environ["TEST_BROKER"],
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

    @app.task(name="proj.flaky", bind=True)
    async def flaky(ctx, tries):
        if ctx.retries < tries:
            raise ctx.retry(countdown=0.5)
        return f"ok after {ctx.retries}"

    @app.task(name="proj.slow")
    async def slow(key, seconds):
        await counter().hincrby(NS + ":started", key, 1)
        deadline = time.monotonic() + seconds  # at most: a test may set NS:release sooner
        while time.monotonic() < deadline and not await counter().exists(NS + ":release"):
            await asyncio.sleep(0.02)
        await counter().hincrby(NS + ":runs", key, 1)
        await counter().hincrby(NS + ":by", "aiotask", 1)
        return key
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


#: An unmodified Celery client's calls (run by `run_producer`); prints what it saw as JSON.
CELERY_CLIENT = """
import json, time
from datetime import datetime, timedelta, timezone
from celery import chain, group
from celery.exceptions import TaskRevokedError
r = {}
r["where"] = where.apply_async(task_id=NS + "-w").get(timeout=30)
r["add"] = add.apply_async((2, 3), task_id=NS + "-a").get(timeout=30)
t0 = time.time()
r["countdown"] = add.apply_async((1, 1), countdown=2, task_id=NS + "-c").get(timeout=30)
r["waited"] = time.time() - t0
past = datetime.now(timezone.utc) - timedelta(seconds=5)
try:
    add.apply_async((5, 5), expires=past, task_id=NS + "-x").get(timeout=30)
except TaskRevokedError as exc:
    r["expired"] = type(exc).__name__
try:
    fail.apply_async(("boom",), task_id=NS + "-f").get(timeout=30)
except ValueError as exc:
    r["failed"] = [type(exc).__name__, str(exc)]
c = chain(
    add.s(1, 2).set(task_id=NS + "-c1"),
    mul.s(10).set(task_id=NS + "-c2"),
    add.s(4).set(task_id=NS + "-c3"),
)
r["chain"] = c.apply_async().get(timeout=30)
add.apply_async((1, 1), link=mul.s(5).set(task_id=NS + "-l2"), task_id=NS + "-l1")
r["link"] = app.AsyncResult(NS + "-l2").get(timeout=30)
g = group(add.s(1, 1).set(task_id=NS + "-g1"), add.s(2, 2).set(task_id=NS + "-g2"))
r["group"] = g.apply_async().get(timeout=30)
r["retried"] = app.send_task("proj.flaky", (2,), task_id=NS + "-r").get(timeout=30)
print(json.dumps(r))
"""


def check_celery_client(out: str) -> None:
    """What the Celery client must have seen with only aiotask workers on its queue."""
    r = json.loads(out.strip().splitlines()[-1])
    assert r["where"] == "aiotask"  # only the aiotask worker consumes the queue
    assert r["add"] == 5
    assert r["countdown"] == 2 and r["waited"] >= 1.5  # held until its eta, then run
    assert r["expired"] == "TaskRevokedError"
    assert r["failed"] == ["ValueError", "boom"]
    assert r["chain"] == 34  # (1 + 2) * 10 + 4: every step on the aiotask worker
    assert r["link"] == 10  # the callback got the parent's result
    assert r["group"] == [2, 4]
    assert r["retried"] == "ok after 2"  # retried twice through the queue, in Celery format


def check_mixed_fleet(apps_dir: Path, env: dict[str, str], ns: str, redis_url: str, n: int) -> None:
    """One Celery and one aiotask worker on one queue drain N Celery-sent tasks: each runs once,
    none is lost, and both kinds of worker take a share."""
    celery_worker = start_celery_worker(apps_dir, env, ns)
    aiotask_worker = start_aiotask_worker(apps_dir, env, ns)
    counter = Redis.from_url(redis_url, decode_responses=True)
    logs: dict[str, str] = {}
    waited = 0.0
    try:
        run_producer(
            apps_dir,
            env,
            f"""
            for i in range({n}):
                count.apply_async((str(i),), task_id=f"{{NS}}-{{i}}", ignore_result=True)
            """,
        )
        started = time.monotonic()
        deadline = started + 240
        while counter.hlen(ns + ":runs") < n and time.monotonic() < deadline:
            time.sleep(0.5)
        waited = time.monotonic() - started
        time.sleep(1.0)  # a duplicate run would land here
        runs = {k: int(v) for k, v in counter.hgetall(ns + ":runs").items()}
        by = {k: int(v) for k, v in counter.hgetall(ns + ":by").items()}
    finally:
        try:
            logs["aiotask"] = stop(aiotask_worker)
        finally:
            logs["celery"] = stop(celery_worker)
            counter.close()
    missing = sorted({str(i) for i in range(n)} - set(runs), key=int)
    # on a failure, say who ran what and show the end of both workers' logs
    assert not missing, (
        f"{len(missing)} of {n} never ran within {waited:.0f} s (first: {missing[:10]}); "
        f"runs by kind {by}\n--- aiotask worker ---\n{logs['aiotask'][-3000:]}"
        f"\n--- celery worker ---\n{logs['celery'][-3000:]}"
    )
    assert set(runs) == {str(i) for i in range(n)}  # none lost
    assert set(runs.values()) == {1}  # each ran once
    assert by.get("celery", 0) > 0 and by.get("aiotask", 0) > 0  # both kinds took a share
    assert sum(by.values()) == n
