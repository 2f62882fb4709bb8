"""The sync API (issue 15): `add.delay(...)`, `app.send_task_sync(...)` and SyncResult, from
plain code and threads, on one per-process loop thread; forks reconnect; misuse on an event
loop's thread is a clear error."""

from __future__ import annotations

import gc
import os
import signal
import threading
import traceback
import warnings
from typing import TYPE_CHECKING

import pytest

from aiotask.exceptions import ResultTimeout, SyncCallInEventLoop, TaskRevoked
from aiotask.result import SyncResult
from aiotask.sync import LOOP, run_sync
from tests.sync_support import clean_sync, close_leftover_loop, make_app, worker_thread

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiotask import App


@pytest.fixture(autouse=True)
def _leftover_loop() -> None:
    close_leftover_loop()


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def app(request: pytest.FixtureRequest, namespace: str) -> Iterator[App]:
    kind = str(request.param)
    app = make_app(request, kind, namespace)

    @app.task(name="proj.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proj.boom")
    async def boom() -> None:
        raise ValueError("boom")

    try:
        yield app
    finally:
        clean_sync(app, kind, namespace)


def test_delay_get_state_and_id(app: App) -> None:
    add = app.tasks["proj.add"]
    with worker_thread(app):
        r = add.delay(2, 3)
        assert isinstance(r, SyncResult)
        assert isinstance(r.id, str)
        assert r.get(timeout=10) == 5
        assert r.state == "SUCCESS"
        assert r.ready() and r.successful() and not r.failed()
        assert app.SyncResult(r.id).get(timeout=1) == 5
        failing = app.tasks["proj.boom"].delay()
        with pytest.raises(ValueError, match="boom"):
            failing.get(timeout=10)
        assert failing.state == "FAILURE"


def test_send_task_sync_with_countdown_and_revoke(app: App) -> None:
    with worker_thread(app):
        later = app.send_task_sync("proj.add", args=(2, 3), kwargs={}, countdown=1)
        assert later.state == "PENDING"
        assert later.get(timeout=15) == 5
        doomed = app.send_task_sync("proj.add", args=(1, 1), countdown=1)
        doomed.revoke(terminate=False)
        assert doomed.state == "REVOKED"
        with pytest.raises(TaskRevoked):
            doomed.get(timeout=10)


def test_get_times_out_without_a_worker(app: App) -> None:
    r = app.tasks["proj.add"].delay(1, 2)
    with pytest.raises(ResultTimeout):
        r.get(timeout=0.3)


def test_many_threads_share_one_connection_set(app: App) -> None:
    add = app.tasks["proj.add"]
    results: dict[int, SyncResult[int]] = {}
    errors: list[BaseException] = []

    def producer(base: int) -> None:
        try:
            for i in range(10):
                results[base + i] = add.delay(base, i)
        except BaseException as exc:
            errors.append(exc)

    with worker_thread(app):
        threads = [threading.Thread(target=producer, args=(b * 100,)) for b in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert {k: r.get(timeout=30) for k, r in results.items()} == {
            b * 100 + i: b * 100 + i for b in range(8) for i in range(10)
        }
    assert LOOP.loop is not None
    assert LOOP.loop in app._sets  # every thread's sends went through the one loop's set
    assert sum(1 for loop in app._sets if loop is LOOP.loop) == 1


async def test_calling_the_sync_api_on_an_event_loop_says_to_await(app: App) -> None:
    add = app.tasks["proj.add"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        with pytest.raises(SyncCallInEventLoop, match=r"await task\.send"):
            add.delay(1, 2)
        with pytest.raises(SyncCallInEventLoop):
            app.send_task_sync("proj.add", args=(1, 2))
        with pytest.raises(RuntimeError):  # it is also a RuntimeError, like asyncio.run's
            app.SyncResult("some-id").get(timeout=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_reconnects_and_the_parent_keeps_working(app: App) -> None:
    """gunicorn --preload: the master sent (its loop thread and connections are live), then
    forks; the child sends on its own connections and exits normally (closing its own, never
    the inherited ones: closing those would close the parent's AMQP connection)."""
    add = app.tasks["proj.add"]
    first = add.delay(1, 1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn/uwsgi worker, say
        code = 1
        signal.alarm(20)  # never outlive the test, whatever happens here
        try:
            os.close(read)
            child = add.delay(20, 22)
            os.write(write, child.id.encode())
            gc.collect()  # inherited connection sets are not closed by garbage collection
            LOOP.stop()  # what the interpreter's exit does: closes this child's connections
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    again = add.delay(2, 2)  # the parent's connections still work
    with worker_thread(app):
        assert first.get(timeout=10) == 2
        assert app.SyncResult(child_id).get(timeout=10) == 42
        assert again.get(timeout=10) == 4


def test_run_sync_sends_a_canvas_and_a_batch(app: App) -> None:
    from aiotask import chain

    add = app.tasks["proj.add"]
    with worker_thread(app):
        r = run_sync(chain(add.s(1, 2), add.s(3)).send())
        assert run_sync(r.get(timeout=10)) == 6
        batch = run_sync(add.send_batch([(i, i) for i in range(5)]))
        assert [SyncResult(b).get(timeout=10) for b in batch] == [0, 2, 4, 6, 8]


def test_a_sync_task_in_a_pool_child_sends_with_delay(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration import sync_pool_tasks as mod

    monkeypatch.setenv("AIOTASK_BROKER_URL", sqlite_url)  # for the pool children
    monkeypatch.delenv("AIOTASK_RESULT_BACKEND", raising=False)
    original = mod.app.conf
    mod.app.conf = original.replace(broker_url=sqlite_url, result_backend=sqlite_url)
    try:
        with worker_thread(mod.app, processes=1):
            ids = mod.fan_out.delay(3).get(timeout=30)
            assert [mod.app.SyncResult(i).get(timeout=10) for i in ids] == [0, 2, 4]
    finally:
        clean_sync(mod.app, "sqlite", "")
        mod.app.conf = original


def test_the_sync_api_inside_the_loop_thread_itself_is_refused(app: App) -> None:
    add = app.tasks["proj.add"]

    async def nested() -> object:
        return add.delay(1, 2)  # on aiotask's own loop thread: would deadlock

    with pytest.raises(SyncCallInEventLoop):
        run_sync(nested())


def test_run_sync_timeout_cancels_the_work_on_the_loop_thread() -> None:
    import asyncio

    state: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state.append("cancelled")
            raise

    with pytest.raises(TimeoutError):
        run_sync(slow(), timeout=0.2)

    async def settled() -> list[str]:
        for _ in range(100):
            if state:
                break
            await asyncio.sleep(0.01)
        return state

    assert run_sync(settled()) == ["cancelled"]
