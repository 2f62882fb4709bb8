"""The signing secret and the broker password appear in no output: the worker's banner and
log (DEBUG, JSON lines), `aiotask inspect conf/stats`, `status`, `queues`, `dlq list/show`,
`result`, the events stream, `repr` of the app and its settings, and the text of the errors a
user meets (bad key settings, a message over the cap, a forged message's dead letter)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.exceptions import AiotaskError, MessageTooLarge
from tests.cli.test_worker_observe import spawn
from tests.conftest import REQUIRE_SERVICES
from tests.faults.test_redis_auth import PASSWORD, PasswordRedis
from tests.procs import run_cli, worker_env

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.redis

SECRET = "never-show-this-signing-key-7c9d2e"
FORGED = "forged-signing-key-000000000000"
TASKS = textwrap.dedent(
    """
    from aiotask import App

    app = App("leak")

    @app.task(name="leak.ok")
    async def ok() -> str:
        return "ok"

    @app.task(name="leak.fail")
    async def fail() -> None:
        raise ValueError("an ordinary failure")
    """
)
APP = ("-A", "leak_tasks:app")


def follow_events(directory: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`aiotask events --json` for a few seconds, its output collected at the end."""
    return subprocess.Popen(
        [sys.executable, "-m", "aiotask", "events", *APP, "--json", "--timeout", "12"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def cli(directory: Path, env: dict[str, str], *argv: str) -> str:
    done = await asyncio.to_thread(run_cli, directory, env, *argv)
    return f"$ aiotask {' '.join(argv)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"


async def test_no_output_shows_the_signing_key_or_the_broker_password(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    server = PasswordRedis(tmp_path)
    server.start()
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    (tmp_path / "leak_tasks.py").write_text(TASKS)
    env = worker_env(tmp_path, url, AIOTASK_SIGNING_KEYS=f"k1:{SECRET}", AIOTASK_EVENTS="true")
    logfile = tmp_path / "worker.log"
    outputs: list[str] = []
    proc = spawn(
        tmp_path, env, *APP, "-l", "DEBUG", "--log-format", "json", "--logfile", str(logfile),
        "-E", "-n", "leaky",
    )  # fmt: skip
    events = follow_events(tmp_path, env)
    try:
        deadline = time.monotonic() + 30
        while not (logfile.exists() and " ready" in logfile.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not start"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the events follower is subscribed
        async with App("leak", broker=url, signing_keys={"k1": SECRET}, events=True) as app:
            ok = await app.send_task("leak.ok")
            assert await ok.get(timeout=20) == "ok"
            failed = await app.send_task("leak.fail")
            with pytest.raises(ValueError, match="ordinary"):
                await failed.get(timeout=20)
            app.conf = app.conf.replace(max_message_size=100)
            with pytest.raises(MessageTooLarge) as too_large:
                await app.send_task("leak.ok", args=["y" * 500])
            outputs += [str(too_large.value), repr(app), repr(app.conf), repr(app.wire)]
        async with App("leak", broker=url, signing_keys={"k1": FORGED}) as forger:
            forged = await forger.send_task("leak.ok")
        for argv in (
            ("inspect", *APP, "conf", "--json"),
            ("inspect", *APP, "stats", "--json"),
            ("inspect", *APP, "conf"),
            ("status", *APP, "--json"),
            ("queues", *APP, "--json"),
            ("dlq", *APP, "list", "--json"),
            ("dlq", *APP, "show", forged.id, "--json"),
            ("result", *APP, failed.id),
        ):
            outputs.append(await cli(tmp_path, env, *argv))
        for bad in (f"k1:{SECRET},{FORGED}", f"k1:{SECRET},k2:short"):
            broken = {**env, "AIOTASK_SIGNING_KEYS": bad}
            outputs.append(await cli(tmp_path, broken, "worker", *APP))
        for keys, key_id in (({"k1": SECRET, "k:2": FORGED}, None), ({"k1": SECRET}, "x")):
            with pytest.raises(AiotaskError) as info:
                App("leak", broker=url, signing_keys=keys, signing_key_id=key_id)
            outputs.append(str(info.value))
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=30)
            event_out, event_err = events.communicate(timeout=30)
        finally:
            proc.kill()
            events.kill()
            server.kill()
    outputs += [stderr, logfile.read_text(), event_out, event_err]
    text = "\n".join(outputs)
    # the outputs are real: each part shows what it should
    assert "broker:       redis://:***@127.0.0.1" in stderr  # the banner
    assert '"signing_keys": "********"' in text or "'signing_keys': '********'" in text
    assert "task-succeeded" in event_out and "task-failed" in event_out
    assert "bad-signature" in text and "an ordinary failure" in text
    assert "over max_message_size" in text and "not of the form id:secret" in text
    assert SECRET not in text, "the signing key leaked"
    assert FORGED not in text, "a signing key leaked"
    assert PASSWORD not in text, "the broker password leaked"
