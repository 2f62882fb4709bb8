"""Signed messages against a real `aiotask worker` process on SQLite, Redis and RabbitMQ:
unsigned, forged and tampered messages are dead-lettered `bad-signature` and never run; an
oversized body and a (signed) zip bomb are dead-lettered `too-large`; signed work runs; the
worker carries on and never logs its key."""

from __future__ import annotations

import asyncio
import struct
import textwrap
import time
import zlib
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App
from aiotask.brokers import Outgoing
from aiotask.protocol import Message
from aiotask.security.signing import Keyring
from aiotask.security.wire import PREFIX
from tests.conftest import REDIS_URL
from tests.contract.conftest import delete_prefix
from tests.procs import lines, run_cli, start_worker, stop, wait_with_stderr, worker_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

SECRET = "worker-signing-secret-5f1e2d3c4b5a"
FORGED = "not-the-real-secret-000000000000"
CAP = 64 * 1024
TASKS = textwrap.dedent(
    """
    import os
    from aiotask import App

    app = App("signproc")
    LOG = os.environ["TEST_LOG_DIR"]

    @app.task(name="signp.mark")
    async def mark(tag: str) -> str:
        with open(os.path.join(LOG, "ran"), "a") as f:
            f.write(tag + "\\n")
        return tag
    """
)
APP = ("-A", "proc_tasks:app")


@pytest.fixture(params=["sqlite", "redis", "amqp"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[tuple[Path, dict[str, str]]]:
    settings = {
        "AIOTASK_KEY_PREFIX": namespace,
        "AIOTASK_SIGNING_KEYS": f"k1:{SECRET}",
        "AIOTASK_REQUIRE_SIGNED": "true",
        "AIOTASK_MAX_MESSAGE_SIZE": str(CAP),
    }
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/proc.db"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    if request.param == "amqp":  # RabbitMQ keeps no results: the worker stores them in Redis
        request.getfixturevalue("redis_url")
        settings["AIOTASK_RESULT_BACKEND"] = REDIS_URL
    (tmp_path / "proc_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    try:
        yield tmp_path, worker_env(tmp_path, url, **settings)
    finally:
        if request.param == "amqp":
            from aiotask.brokers.rabbitmq import RabbitMQBroker

            app = App("cleanup", broker=url, backend=None, key_prefix=namespace)
            assert isinstance(app.broker, RabbitMQBroker)
            async with app:
                await app.broker.delete_queue("default")
        if request.param in ("redis", "amqp"):
            await delete_prefix(REDIS_URL, namespace)


def producer(env: dict[str, str], **settings: Any) -> App:
    return App(
        "signproc",
        broker=env["AIOTASK_BROKER_URL"],
        backend=env.get("AIOTASK_RESULT_BACKEND", env["AIOTASK_BROKER_URL"]),
        key_prefix=env["AIOTASK_KEY_PREFIX"],
        **settings,
    )


def signed_bomb(message_id: str) -> bytes:
    """A frame signed with the real key whose zlib payload expands far past the cap."""
    inner = b'{"v":1,"id":"' + message_id.encode() + b'","task":"signp.mark","args":["'
    payload = zlib.compress(inner + b"a" * (32 << 20) + b'"]}', 9)
    head = struct.pack(">4sccIB", PREFIX, b"j", b"z", 100, 2) + b"k1"
    return head + Keyring.of({"k1": SECRET}, "k1").sign(head, payload) + payload


async def dead_letters(directory: Path, env: dict[str, str], want: int) -> dict[str, str]:
    deadline = time.monotonic() + 30
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        done = await asyncio.to_thread(run_cli, directory, env, "dlq", *APP, "list", "--json")
        assert done.returncode == 0, done.stderr
        found = {d["id"]: d["reason"] for d in orjson.loads(done.stdout)}
        if len(found) >= want:
            break
        await asyncio.sleep(0.2)
    return found


async def test_only_signed_messages_run_on_a_worker_process(
    setup: tuple[Path, dict[str, str]],
) -> None:
    directory, env = setup
    worker = start_worker(directory, env, "-c", "4")
    try:
        good = producer(env, signing_keys={"k1": SECRET})
        async with good:
            assert await (await good.send_task("signp.mark", args=["good"])).get(timeout=20) == (
                "good"
            )
            async with producer(env) as unsigned:
                r_unsigned = await unsigned.send_task("signp.mark", args=["unsigned"])
            async with producer(env, signing_keys={"k1": FORGED}) as forger:
                r_forged = await forger.send_task("signp.mark", args=["forged"])
            body = good.wire.encode(Message("tampered-1", "signp.mark", ["good-2"]))
            assert b'"good-2"' in body
            tampered = body.replace(b'"good-2"', b'"evil-2"')
            oversized = b"{" + b" " * (CAP + 10) + b"}"
            await good.broker.publish(
                [
                    Outgoing("default", tampered, "tampered-1"),
                    Outgoing("default", oversized, "oversized-1"),
                    Outgoing("default", signed_bomb("bomb-1"), "bomb-1"),
                ]
            )
            reasons = await dead_letters(directory, env, 5)
            # the worker carries on after all of them
            assert await (await good.send_task("signp.mark", args=["after"])).get(timeout=20) == (
                "after"
            )
        assert reasons == {
            r_unsigned.id: "bad-signature",
            r_forged.id: "bad-signature",
            "tampered-1": "bad-signature",
            "oversized-1": "too-large",
            "bomb-1": "too-large",
        }
        assert sorted(lines(directory, "ran")) == ["after", "good"]
    finally:
        code = stop(worker)
    assert code == 0


async def test_require_signed_without_keys_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "proc_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    env = worker_env(tmp_path, f"sqlite:///{tmp_path}/proc.db", AIOTASK_REQUIRE_SIGNED="true")
    done = await asyncio.to_thread(run_cli, tmp_path, env, "worker", *APP)
    assert done.returncode == 2
    assert "require_signed" in done.stderr and "AIOTASK_SIGNING_KEYS" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_worker_with_keys_logs_no_secret(tmp_path: Path) -> None:
    """The banner and every log line of a keyed worker that dead-letters forgeries."""
    (tmp_path / "proc_tasks.py").write_text(TASKS)
    (tmp_path / "logs").mkdir()
    url = f"sqlite:///{tmp_path}/proc.db"
    env = worker_env(tmp_path, url, AIOTASK_SIGNING_KEYS=f"k1:{SECRET}", AIOTASK_LOG_LEVEL="DEBUG")
    worker = start_worker(tmp_path, env, "-l", "DEBUG")
    try:
        async with App("signproc", broker=url, signing_keys={"k1": FORGED}) as forger:
            await forger.send_task("signp.mark", args=["forged"])
        async with App("signproc", broker=url, signing_keys={"k1": SECRET}) as good:
            assert await (await good.send_task("signp.mark", args=["ok"])).get(timeout=20) == "ok"
    finally:
        worker.terminate()
        code, stderr = wait_with_stderr(worker, 30)
    assert code == 0
    assert "bad-signature" in stderr and "key id 'k1'" in stderr
    assert SECRET not in stderr and FORGED not in stderr
