"""A real worker process (events on) and the dashboard in this process, on Redis or SQLite."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from tests.dashboard.dash_tasks import make_app
from tests.procs import start_worker, stop, worker_env

if TYPE_CHECKING:
    import subprocess
    from collections.abc import AsyncIterator, Callable

    from starlette.applications import Starlette

    from aiotask import App

pytest.importorskip("starlette")

W = TypeVar("W", bound="Web")

ROOT = Path(__file__).resolve().parents[2]
SHIM = "from tests.dashboard.dash_tasks import app\n"


@dataclass
class Web:
    """The pieces a dashboard test talks to."""

    directory: Path
    env: dict[str, str]
    app: App
    web: Starlette
    client: httpx.AsyncClient

    async def result(self, task_id: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll GET /api/results/{id} until its state is one of `states`."""
        deadline = time.monotonic() + timeout
        while True:
            r = await self.client.get(f"/api/results/{task_id}")
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            if body["state"] in states or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.1)

    async def until(self, check: Any, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.1)


@dataclass
class Stack(Web):
    """...and the worker process (events on) that runs the tasks."""

    worker: subprocess.Popen[str]


def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dash.db"
    url: str = request.getfixturevalue("redis_url")
    return url


def prepare(directory: Path, url: str, namespace: str, backend: str | None) -> dict[str, str]:
    """The task module shim and the environment of a worker process over `url`."""
    (directory / "proc_tasks.py").write_text(SHIM)
    (directory / "logs").mkdir(exist_ok=True)
    extra = {"AIOTASK_RESULT_BACKEND": backend} if backend else {}
    return worker_env(
        directory, url, AIOTASK_KEY_PREFIX=namespace, PYTHONPATH=f"{directory}:{ROOT}", **extra
    )


async def open_web(
    directory: Path, url: str, namespace: str, backend: str | None = None, **web_options: Any
) -> AsyncIterator[Web]:
    """The dashboard in this process, over `url`, with no worker."""
    from aiotask.dashboard import create_app

    env = prepare(directory, url, namespace, backend)
    settings: dict[str, Any] = {"backend": backend} if backend else {}
    app = make_app(broker=url, key_prefix=namespace, events=True, **settings)
    web = create_app(app, **web_options)
    transport = httpx.ASGITransport(app=web)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        try:
            yield Web(directory, env, app, web, client)
        finally:
            await web.state.dashboard.close()


async def open_stack(
    directory: Path, url: str, namespace: str, backend: str | None = None, **web_options: Any
) -> AsyncIterator[Stack]:
    """The dashboard and a real worker process (events on)."""
    env = prepare(directory, url, namespace, backend)
    worker = start_worker(directory, env, "-E", "-c", "8")
    try:
        async for w in open_web(directory, url, namespace, backend, **web_options):
            yield Stack(w.directory, w.env, w.app, w.web, w.client, worker)
    finally:
        stop(worker)


async def on_each_broker(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    namespace: str,
    opener: Callable[..., AsyncIterator[W]],
) -> AsyncIterator[W]:
    """`opener` over the broker of `request.param`; RabbitMQ with the Redis result backend."""
    if request.param != "amqp":
        async for s in opener(tmp_path, broker_url(request, tmp_path), namespace):
            yield s
        return
    # RabbitMQ keeps no results: the worker and the dashboard store them in Redis
    url: str = request.getfixturevalue("amqp_url")
    backend: str = request.getfixturevalue("redis_url")
    try:
        async for s in opener(tmp_path, url, namespace, backend):
            yield s
    finally:
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        app = make_app(broker=url, backend=None, key_prefix=namespace)
        assert isinstance(app.broker, RabbitMQBroker)
        async with app:
            await app.broker.delete_queue("default")


@pytest.fixture(params=["redis", "sqlite", "amqp"])
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[Stack]:
    async for s in on_each_broker(request, tmp_path, namespace, open_stack):
        yield s


@pytest.fixture(params=["redis", "sqlite", "amqp"])
async def web(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> AsyncIterator[Web]:
    """The dashboard alone, for tests that run no task: a worker process would only cost time."""
    async for s in on_each_broker(request, tmp_path, namespace, open_web):
        yield s


@pytest.fixture
async def redis_stack(tmp_path: Path, namespace: str, redis_url: str) -> AsyncIterator[Stack]:
    async for s in open_stack(tmp_path, redis_url, namespace):
        yield s
