"""`aiotask worker --metrics-port --log-format json --logfile` as a real process: /metrics
scraped over HTTP after known work, and the JSON log file it wrote."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from typing import TYPE_CHECKING

import orjson
import pytest

from aiotask import App
from tests.procs import stop, worker_env

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "pa55-w0rd-xyz"
TASKS = textwrap.dedent(
    f"""
    import logging
    from aiotask import App
    from aiotask.exceptions import Reject

    app = App("obs")
    log = logging.getLogger("obs.tasks")

    @app.task(name="obs.add")
    async def add(x: int, y: int) -> int:
        log.info("adding, cache at redis://u:{SECRET}@cache:6379/0")
        return x + y

    @app.task(name="obs.fail")
    async def fail() -> None:
        raise RuntimeError("down: amqp://guest:{SECRET}@mq:5672//")

    @app.task(name="obs.retry", bind=True, max_retries=3)
    async def retry(ctx) -> int:
        if ctx.retries == 0:
            raise ctx.retry(countdown=0.05)
        return ctx.retries

    @app.task(name="obs.reject")
    async def reject() -> None:
        raise Reject("not for us", requeue=False)

    @app.task(name="obs.cpu")
    def cpu() -> int:  # a pool child: logs the same way, with its task's name and id
        log.warning("in a child, cache at redis://u:{SECRET}@cache:6379/0")
        return 1
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiotask", "worker", *args],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def start(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "obs_tasks.py").write_text(TASKS)
    env = worker_env(tmp_path, url)
    logfile = tmp_path / "worker.log"
    proc = spawn(tmp_path, env, "-A", "obs_tasks:app", *args)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if logfile.exists() and " ready" in logfile.read_text():
            return proc
        time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"worker did not start: {err}")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_over_http_and_json_logfile(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/obs.db"
    port = free_port()
    logfile = tmp_path / "worker.log"
    proc = start(
        tmp_path, url, "-c", "4", "-P", "1", "--metrics-port", str(port),
        "--log-format", "json", "--logfile", str(logfile),
    )  # fmt: skip
    try:
        async with App("obs", broker=url) as app:
            adds = [await app.send_task("obs.add", args=[i, i]) for i in range(5)]
            assert [await r.get(timeout=15) for r in adds] == [0, 2, 4, 6, 8]
            with pytest.raises(RuntimeError, match="down"):
                await (await app.send_task("obs.fail")).get(timeout=15)
            assert await (await app.send_task("obs.retry")).get(timeout=15) == 1
            cpu = await app.send_task("obs.cpu")
            assert await cpu.get(timeout=30) == 1
            await app.send_task("obs.reject")
            samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for _ in range(100):  # the reject has no result to wait for: watch the counter
                samples = await asyncio.to_thread(scrape, port)
                if value(samples, "aiotask_dead_letters_total", queue="default"):
                    break
                await asyncio.sleep(0.1)
    finally:
        code = stop(proc)
    assert code == 0

    def tasks(task: str, state: str) -> float:
        return value(samples, "aiotask_tasks_total", queue="default", task=task, state=state)

    assert tasks("obs.add", "succeeded") == 5
    assert tasks("obs.fail", "failed") == 1
    assert tasks("obs.retry", "retried") == 1
    assert tasks("obs.retry", "succeeded") == 1
    assert tasks("obs.reject", "rejected") == 1
    assert tasks("obs.cpu", "succeeded") == 1
    assert value(samples, "aiotask_task_retries_total", queue="default", task="obs.retry") == 1
    assert value(samples, "aiotask_dead_letters_total", queue="default") == 1
    count = "aiotask_task_duration_seconds_count"
    assert value(samples, count, queue="default", task="obs.add") == 5
    waits = value(samples, "aiotask_queue_wait_seconds_count", queue="default", task="obs.add")
    assert waits == 5
    assert value(samples, "aiotask_pool_children") == 1  # the sync task started one child
    assert value(samples, "aiotask_worker_concurrency") == 4
    assert value(samples, "aiotask_tasks_in_flight") == 0
    assert value(samples, "aiotask_prefetch_buffered") == 0

    text = logfile.read_text()
    assert SECRET not in text
    records = [orjson.loads(line) for line in text.splitlines()]
    adding = [r for r in records if r.get("task_name") == "obs.add" and r["logger"] == "obs.tasks"]
    assert len(adding) == 5 and {r["task_id"] for r in adding} == {r.id for r in adds}
    assert all(r["task_name"] == "obs.add" for r in adding)
    (child,) = [r for r in records if r.get("task_name") == "obs.cpu" and r["level"] == "WARNING"]
    assert child["task_id"] == cpu.id and child["process"] != proc.pid
    assert "u:***@cache" in child["message"]
    failed = [r for r in records if r.get("task_name") == "obs.fail" and r["level"] == "ERROR"]
    assert failed and "guest:***@mq" in failed[0]["exc"]


KEEP_TASKS = textwrap.dedent(
    f"""
    import logging, logging.config, os
    from aiotask import App

    logging.config.dictConfig({{
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {{"mine": {{"format": "MINE %(levelname)s %(task_id)s %(message)s"}}}},
        "handlers": {{"mine": {{
            "class": "logging.FileHandler",
            "filename": os.environ["MY_LOG"],
            "formatter": "mine",
        }}}},
        "root": {{"handlers": ["mine"], "level": "INFO"}},
    }})
    app = App("keep")

    @app.task(name="keep.hello")
    async def hello() -> str:
        logging.getLogger("keep").info("hello via amqp://guest:{SECRET}@mq//")
        return "hi"

    @app.task(name="keep.child")
    def child() -> str:  # a pool child: the module's dictConfig runs there too
        logging.getLogger("keep").info("child via amqp://guest:{SECRET}@mq//")
        return "ok"
    """
)


async def test_keep_logging_keeps_the_apps_dictconfig(tmp_path: Path) -> None:
    (tmp_path / "keep_tasks.py").write_text(KEEP_TASKS)
    url = f"sqlite:///{tmp_path}/keep.db"
    mine = tmp_path / "mine.log"
    env = worker_env(tmp_path, url, MY_LOG=str(mine))
    proc = spawn(tmp_path, env, "-A", "keep_tasks:app", "--keep-logging", "-P", "1")
    try:
        deadline = time.monotonic() + 30
        while not (mine.exists() and " ready" in mine.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not start"
            await asyncio.sleep(0.05)
        async with App("keep", broker=url) as app:
            r = await app.send_task("keep.hello")
            assert await r.get(timeout=15) == "hi"
            c = await app.send_task("keep.child")
            assert await c.get(timeout=30) == "ok"
    finally:
        assert stop(proc) == 0
    text = mine.read_text()
    assert SECRET not in text
    assert f"MINE INFO {r.id} hello via amqp://guest:***@mq//" in text.splitlines()
    assert f"MINE INFO {c.id} child via amqp://guest:***@mq//" in text.splitlines()


def test_bad_log_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "obs_tasks.py").write_text(TASKS)
    env = worker_env(tmp_path, f"sqlite:///{tmp_path}/bad.db")
    done = subprocess.run(
        [sys.executable, "-m", "aiotask", "worker", "-A", "obs_tasks:app", "--log-format", "xml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--log-format 'xml'" in done.stderr
