"""Security settings through a real Worker (same code paths as `aiotask worker`): signed,
compressed and msgpack messages drive retries and canvas (workers re-sign what they send),
refusals are counted in metrics, results over the cap fail, and a message can only name a
registered task: the worker never imports or resolves anything a message names."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App, AsyncResult, chain, chord, group
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.backends.memory import MemoryBackend
from aiotask.brokers import Outgoing
from aiotask.canvas.compile import CHAIN_STATE
from aiotask.exceptions import MessageTooLarge, NotRegistered, ResultTimeout, TaskError
from aiotask.protocol import Message
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiotask.context import TaskContext

SECRET = "in-process-signing-secret-0123456789"
CONFIGS: dict[str, dict[str, Any]] = {
    "signed": {"signing_keys": {"k1": SECRET}},
    "signed-zlib-msgpack": {
        "signing_keys": {"k1": SECRET},
        "compression": "zlib",
        "compression_threshold": 10,
        "serializer": "msgpack",
    },
    "signed-zstd-pickle": {
        "signing_keys": {"k0": "an-old-key-still-accepted-0123", "k1": SECRET},
        "signing_key_id": "k1",
        "compression": "zstd",
        "compression_threshold": 10,
        "serializer": "pickle",
    },
}


def make_app(url: str, namespace: str, **settings: Any) -> App:
    app = App("sec", broker=url, backend=url, key_prefix=namespace, **settings)
    attempts: dict[str, int] = {}

    @app.task(name="sec.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sec.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="sec.flaky", bind=True, max_retries=3)
    async def flaky(ctx: TaskContext, key: str) -> int:
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] < 3:
            raise ctx.retry(countdown=0.01)
        return attempts[key]

    @app.task(name="sec.pad")
    async def pad(x: int, filler: str = "") -> int:
        return x + 1

    @app.task(name="sec.big")
    async def big(n: int) -> str:
        return "x" * n

    return app


@pytest.fixture(params=["memory", "sqlite", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    value: str = request.getfixturevalue(f"{request.param}_url")
    return value


@pytest.fixture
async def cleanup(url: str, namespace: str) -> AsyncIterator[None]:
    yield
    if url.startswith("redis"):
        from tests.contract.conftest import delete_prefix

        await delete_prefix(url, namespace)


@pytest.mark.parametrize("config", list(CONFIGS))
async def test_retries_and_canvas_run_signed(
    config: str, url: str, namespace: str, cleanup: None
) -> None:
    app = make_app(url, namespace, **CONFIGS[config])
    add, total, flaky = app.tasks["sec.add"], app.tasks["sec.total"], app.tasks["sec.flaky"]
    async with app, start_worker(app):
        assert await (await flaky.send("a")).get(timeout=10) == 3  # two signed retries
        assert await (await chain(add.s(1, 2), add.s(3), add.s(4)).send()).get(timeout=10) == 10
        header = group(add.s(i, i) for i in range(5))
        assert await (await chord(header, total.s()).send()).get(timeout=10) == 20


def long_chain(app: App) -> Any:
    """A chain whose rest is too long to travel inline: kept in the backend (a blob)."""
    pad = app.tasks["sec.pad"]
    return chain(pad.s(0, filler="f" * 1000), *(pad.s(filler="f" * 1000) for _ in range(11)))


async def test_a_long_chain_kept_in_the_backend_runs_signed(
    url: str, namespace: str, cleanup: None
) -> None:
    app = make_app(url, namespace, signing_keys={"k1": SECRET})
    async with app, start_worker(app):
        assert await (await long_chain(app).send()).get(timeout=10) == 12


def _backend(app: App) -> MemoryBackend:
    assert isinstance(app.backend, MemoryBackend)
    return app.backend


async def test_a_forged_chord_body_in_the_backend_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app("memory://", "x", signing_keys={"k1": SECRET})
    add, total = app.tasks["sec.add"], app.tasks["sec.total"]
    async with app:
        r = await chord(group(add.s(i, i) for i in range(3)), total.s()).send()
        assert isinstance(r, AsyncResult)
        (stored,) = _backend(app)._groups.values()
        assert stored.body is not None and stored.body.startswith(b"\x00ATS")
        # someone with write access to the backend swaps the body for an unsigned one
        stored.body = stored.body[stored.body.index(b"{") :].replace(b"sec.total", b"sec.big")
        async with start_worker(app):
            with pytest.raises(ResultTimeout):
                await r.get(timeout=1.5)
    assert "stored body not used (bad-signature)" in caplog.text
    assert await r.state() == "PENDING"


async def test_a_forged_chain_remainder_in_the_backend_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app("memory://", "x", signing_keys={"k1": SECRET})
    async with app:
        r = await long_chain(app).send()
        backend = _backend(app)
        blobs = [k for k, (rec, _) in backend._results.items() if rec.state == CHAIN_STATE]
        assert blobs
        for key in blobs:  # replaced by plain (unsealed) steps
            steps = [{"t": "task", "task": "sec.big", "id": "forged", "args": [1], "kwargs": {}}]
            await backend.store([EncodedResult.of(ResultRecord(key, CHAIN_STATE, steps), 60)])
        async with start_worker(app):
            with pytest.raises(ResultTimeout):
                await r.get(timeout=1.5)
    assert "not used (bad-signature)" in caplog.text
    assert await app.AsyncResult("forged").state() == "PENDING"


HOSTILE: dict[str, bytes] = {
    "dup": b'{"v":1,"id":"dup","task":"sec.add","task":"sec.big","args":[1,2]}',
    "nan": b'{"v":1,"id":"nan","task":"sec.add","args":[1,2],"eta":NaN}',
    "utf8": b'{"v":1,"id":"utf8","task":"sec.add","args":["\xff\xfe"]}',
    "deep": b'{"v":1,"id":"deep","task":"sec.add","args":' + b"[" * 3000 + b"]" * 3000 + b"}",
    "bool-v": b'{"v":true,"id":"bool-v","task":"sec.add"}',
    "surrogate": b'{"v":1,"id":"surrogate","task":"sec.add","args":["\\ud800"]}',
    **{
        f"type-{name}": orjson.dumps({"v": 1, "id": f"type-{name}", "task": "sec.add", name: bad})
        for name, bad in [
            ("args", {"x": 1}),
            ("kwargs", [1]),
            ("eta", "soon"),
            ("expires", True),
            ("retries", 1.5),
            ("headers", {"h": 1}),
            ("chain", "x"),
            ("links", {}),
            ("errbacks", 3),
            ("group_index", "0"),
            ("ignore_result", 1),
            ("queue", 5),
            ("root_id", 7),
        ]
    },
}


async def test_hostile_envelopes_are_dead_lettered_and_the_worker_carries_on(
    url: str, namespace: str, cleanup: None
) -> None:
    app = make_app(url, namespace)
    async with app, start_worker(app):
        await app.broker.publish([Outgoing("default", body, key) for key, body in HOSTILE.items()])
        reasons: dict[str, str] = {}
        for _ in range(300):
            reasons = {d.message_id: d.reason for d in await app.broker.dead_letters("default")}
            if len(reasons) == len(HOSTILE):
                break
            await asyncio.sleep(0.02)
        assert await (await app.tasks["sec.add"].send(2, 3)).get(timeout=5) == 5
    assert set(reasons) == set(HOSTILE)
    assert all(reason.startswith("undecodable: ") for reason in reasons.values()), reasons
    assert "duplicate key 'task'" in reasons["dup"]
    assert "'retries' has the wrong type" in reasons["type-retries"]


async def test_refusals_are_counted_and_dead_lettered_with_their_reason() -> None:
    pytest.importorskip("prometheus_client")
    from aiotask.metrics import WorkerMetrics

    app = make_app("memory://", "x", signing_keys={"k1": SECRET}, max_message_size=4096)
    unsigned = App("sec", broker="memory://", backend="memory://")
    metrics = WorkerMetrics()
    async with app, start_worker(app, probe=metrics):
        body = unsigned.wire.encode(Message("u1", "sec.add", [1, 2]))
        await app.broker.publish(
            [
                Outgoing("default", body, "u1"),
                Outgoing("default", b"[" * 3000, "junk"),
                Outgoing("default", b"x" * 5000, "huge"),
            ]
        )
        assert await (await app.tasks["sec.add"].send(2, 2)).get(timeout=5) == 4
        reasons: dict[str, str] = {}
        for _ in range(200):
            reasons = {d.message_id: d.reason for d in await app.broker.dead_letters("default")}
            if len(reasons) == 3:
                break
            await asyncio.sleep(0.02)
    metrics.close()
    assert reasons == {"u1": "bad-signature", "junk": "bad-signature", "huge": "too-large"}
    assert metrics.refusals == {("default", "bad-signature"): 2, ("default", "too-large"): 1}
    assert app.backend is not None and await app.backend.get("u1") is None  # it never ran


async def test_a_result_over_the_cap_fails_with_message_too_large_and_its_chain_stops() -> None:
    app = make_app("memory://", "x", max_result_size=1000)
    big, add = app.tasks["sec.big"], app.tasks["sec.add"]
    async with app, start_worker(app):
        assert await (await big.send(10)).get(timeout=5) == "x" * 10
        r = await big.send(5000)
        with pytest.raises(MessageTooLarge, match=r"'sec\.big'.*max_result_size") as info:
            await r.get(timeout=5)
        assert await r.state() == "FAILURE"
        assert isinstance(info.value, MessageTooLarge)
        # the next chain step never receives a result nobody stored: it fails on
        c = await (big.s(5000) | add.s(1)).send()
        with pytest.raises(MessageTooLarge):
            await c.get(timeout=5)


EVIL = """
import pathlib, os
pathlib.Path(os.environ["EVIL_MARKER"]).write_text("imported")

def run(*args, **kwargs):
    pathlib.Path(os.environ["EVIL_MARKER"]).write_text("ran")
"""


async def test_a_message_never_makes_the_worker_import_or_resolve_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "evil_sidefx.py").write_text(EVIL)
    marker = tmp_path / "marker"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app("memory://", "x")
    names = [
        "evil_sidefx.run",
        "evil_sidefx:run",
        "os.system",
        "builtins.eval",
        "subprocess:run",
        "__import__",
        "sec.add.__globals__",
    ]
    async with app, start_worker(app):
        results = [await app.send_task(name, args=["touch /tmp/pwned"]) for name in names]
        mapped = await app.send_task("aiotask.map", args=["evil_sidefx.run", [1]])
        for r in [*results, mapped]:
            with pytest.raises(NotRegistered):
                await r.get(timeout=5)
        assert await app.AsyncResult(results[0].id).state() == "FAILURE"
        dead = {d.message_id: d.reason for d in await app.broker.dead_letters("default")}
    assert all("not registered" in dead[r.id] for r in results)
    assert not marker.exists()
    assert "evil_sidefx" not in sys.modules


def test_a_failure_record_naming_an_unimported_module_is_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiotask.serializer import ExceptionInfo, caller_exception

    (tmp_path / "evil_sidefx.py").write_text(EVIL)
    marker = tmp_path / "marker"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    exc = caller_exception(ExceptionInfo("evil_sidefx.run", "boom"))
    assert isinstance(exc, TaskError)
    assert not marker.exists() and "evil_sidefx" not in sys.modules
    # an attribute path through an imported module is not a way in either
    exc = caller_exception(ExceptionInfo("os.system", "boom"))
    assert isinstance(exc, TaskError)
