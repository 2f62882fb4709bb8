"""A real worker process (events on) and the dashboard in this process, on Redis or SQLite."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.dashboard.dash_tasks import make_app
from tests.procs import start_worker, stop, worker_env

if TYPE_CHECKING:
    import subprocess
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette

    from aiotask import App

pytest.importorskip("starlette")

ROOT = Path(__file__).resolve().parents[2]
SHIM = "from tests.dashboard.dash_tasks import app\n"


@dataclass
class Stack:
    """The pieces a dashboard test talks to."""

    directory: Path
    env: dict[str, str]
    app: App
    web: Starlette
    client: httpx.AsyncClient
    worker: subprocess.Popen[str]

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


def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dash.db"
    url: str = request.getfixturevalue("redis_url")
    return url


async def open_stack(
    directory: Path, url: str, namespace: str, backend: str | None = None, **web_options: Any
) -> AsyncIterator[Stack]:
    from aiotask.dashboard import create_app

    (directory / "proc_tasks.py").write_text(SHIM)
    (directory / "logs").mkdir(exist_ok=True)
    extra = {"AIOTASK_RESULT_BACKEND": backend} if backend else {}
    env = worker_env(
        directory,
        url,
        AIOTASK_KEY_PREFIX=namespace,
        PYTHONPATH=f"{directory}:{ROOT}",
        **extra,
    )
    worker = start_worker(directory, env, "-E", "-c", "8")
    settings: dict[str, Any] = {"backend": backend} if backend else {}
    app = make_app(broker=url, key_prefix=namespace, events=True, **settings)
    web = create_app(app, **web_options)
    transport = httpx.ASGITransport(app=web)
    try:
        async with app, httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            try:
                yield Stack(directory, env, app, web, client, worker)
            finally:
                await web.state.dashboard.close()
    finally:
        stop(worker)


@pytest.fixture(params=["redis", "sqlite", "amqp"])
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[Stack]:
    if request.param != "amqp":
        async for s in open_stack(tmp_path, broker_url(request, tmp_path), namespace):
            yield s
        return
    # RabbitMQ keeps no results: the worker and the dashboard store them in Redis
    url: str = request.getfixturevalue("amqp_url")
    backend: str = request.getfixturevalue("redis_url")
    try:
        async for s in open_stack(tmp_path, url, namespace, backend):
            yield s
    finally:
        from aiotask.brokers.rabbitmq import RabbitMQBroker

        app = make_app(broker=url, backend=None, key_prefix=namespace)
        assert isinstance(app.broker, RabbitMQBroker)
        async with app:
            await app.broker.delete_queue("default")


@pytest.fixture
async def redis_stack(tmp_path: Path, namespace: str, redis_url: str) -> AsyncIterator[Stack]:
    async for s in open_stack(tmp_path, redis_url, namespace):
        yield s
