"""Helpers for the sync-API tests: an App per broker kind, a worker in a thread, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from typing import TYPE_CHECKING, Any

from aiotask import App
from aiotask.sync import LOOP, run_sync
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pytest

KINDS = ["memory", "sqlite", "redis", "amqp"]


def close_leftover_loop() -> None:
    """Close the idle loop pytest-asyncio leaves set on the main thread after an async test:
    `asyncio.run` on the main thread replaces it, and it would be collected unclosed."""
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
    policy.set_event_loop(None)


def make_app(request: pytest.FixtureRequest, kind: str, namespace: str, **settings: Any) -> App:
    """An App on `kind` under this test's namespace; amqp keeps its results on Redis."""
    if kind == "memory":
        return App(namespace, broker="memory://", backend="memory://", **settings)
    if kind == "sqlite":
        url = request.getfixturevalue("sqlite_url")
        return App(namespace, broker=url, key_prefix=namespace, **settings)
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return App(namespace, broker=url, key_prefix=namespace, **settings)
    amqp, redis = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    return App(namespace, broker=amqp, backend=redis, key_prefix=namespace, **settings)


async def clean(app: App, kind: str, namespace: str) -> None:
    """Delete what the test left on the shared servers (its namespace only)."""
    await app.connect()  # so that close() below closes what delete_queue opens
    if kind == "amqp":
        await app.broker.delete_queue(app.conf.default_queue)  # type: ignore[attr-defined]
    if kind in ("redis", "amqp"):
        from redis.asyncio import Redis

        url = app.conf.backend_url
        assert url is not None
        client = Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{namespace}*", count=1000)]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()
    await app.close()


def clean_sync(app: App, kind: str, namespace: str) -> None:
    """From plain code: clean up, and close the set the sync API opened on its loop thread."""
    asyncio.run(clean(app, kind, namespace))
    if LOOP.loop is not None and LOOP.loop in app._sets:
        run_sync(app.close())


@contextlib.contextmanager
def worker_thread(app: App, **options: Any) -> Iterator[None]:
    """A real worker on its own event loop in a thread, for tests written in plain code."""
    started = threading.Event()
    failed: list[BaseException] = []
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        loop_box.append(asyncio.get_running_loop())
        async with start_worker(app, **options):
            started.set()
            await stop[0].wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failed.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    started.wait(30)
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        if loop_box:
            loop_box[0].call_soon_threadsafe(stop[0].set)
        thread.join(30)
        if failed:
            raise failed[0]
