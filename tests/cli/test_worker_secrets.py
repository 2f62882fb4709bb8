"""A worker whose broker URL holds a password never logs it: not at startup, not in a task's
failure, not while the server is down and it reconnects (DEBUG, JSON lines, a log file)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import urllib.request
from typing import TYPE_CHECKING

import orjson
import pytest

from aiotask import App
from tests.cli.test_worker_observe import free_port, spawn
from tests.conftest import REQUIRE_SERVICES
from tests.faults.test_redis_auth import PASSWORD, PasswordRedis
from tests.procs import worker_env

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.redis

TASKS = """
from aiotask import App

app = App("sec")

@app.task(name="sec.ok")
async def ok() -> str:
    return "ok"

@app.task(name="sec.leak")
async def leak(url: str) -> None:
    raise ConnectionError(f"cannot use {url}")
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
        return text


async def test_password_never_logged_through_an_outage(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    server = PasswordRedis(tmp_path)
    server.start()
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    (tmp_path / "sec_tasks.py").write_text(TASKS)
    env = worker_env(tmp_path, url, AIOTASK_BROKER_UNREACHABLE_TIMEOUT="60")
    logfile, port = tmp_path / "worker.log", free_port()
    proc = spawn(
        tmp_path, env, "-A", "sec_tasks:app", "-l", "DEBUG", "--log-format", "json",
        "--logfile", str(logfile), "--metrics-port", str(port),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (logfile.exists() and " ready" in logfile.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not start"
            await asyncio.sleep(0.05)
        async with App("sec", broker=url, broker_unreachable_timeout=60) as app:
            with pytest.raises(ConnectionError):
                await (await app.send_task("sec.leak", args=[url])).get(timeout=15)
            server.kill()  # the worker logs its reconnect attempts meanwhile
            await asyncio.sleep(1.5)
            server.start()
            assert await (await app.send_task("sec.ok")).get(timeout=60) == "ok"
        metrics = await asyncio.to_thread(scrape, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
            server.kill()
    assert proc.returncode == 0
    assert 'aiotask_broker_reconnects_total{server="Redis"}' in metrics
    text = logfile.read_text()
    assert "broker:       redis://:***@127.0.0.1" in stderr  # the banner
    assert PASSWORD not in text and PASSWORD not in stderr
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert any("unreachable" in r["message"] for r in lines), "no reconnect was logged"
    assert any(":***@127.0.0.1" in r.get("exc", "") for r in lines)
