"""Stored history end to end: a dashboard started again (a new process) still has what the
one before it saw; a workflow page draws a chain and a chord from it; the overview charts it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from aiotask import chain, chord
from aiotask.events import EventType, TaskEvent, follow_after
from tests.dashboard.conftest import ROOT, SHIM, broker_url
from tests.dashboard.dash_tasks import make_app
from tests.dashboard.test_auth_mount_cli import _listening, _serve
from tests.procs import start_worker, stop, worker_env
from tests.servers import free_port

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Awaitable
    from pathlib import Path

    from starlette.applications import Starlette

    from aiotask import App
    from aiotask.dashboard.history import History
    from aiotask.history import HistoryStore
    from tests.dashboard.conftest import Stack

pytest.importorskip("starlette")


def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _history(client: httpx.Client, **params: Any) -> dict[str, Any]:
    r = client.get("/api/history", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return broker_url(request, tmp_path)


def test_a_restarted_dashboard_process_still_has_the_history(
    tmp_path: Path, url: str, namespace: str
) -> None:
    (tmp_path / "proc_tasks.py").write_text(SHIM)
    (tmp_path / "logs").mkdir(exist_ok=True)
    env = worker_env(tmp_path, url, AIOTASK_KEY_PREFIX=namespace, PYTHONPATH=f"{tmp_path}:{ROOT}")
    worker = start_worker(tmp_path, env, "-E", "-c", "4")
    first: subprocess.Popen[str] | None = None
    second: subprocess.Popen[str] | None = None
    try:
        port = free_port()
        first = _serve(tmp_path, env, "--port", str(port))
        _listening(port, first)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            ok = client.post("/api/tasks/dash.add", json={"args": [20, 22]}).json()["id"]
            bad = client.post("/api/tasks/dash.boom", json={"args": ["kaput-7"]}).json()["id"]

            def both_done() -> bool:
                states = {t["id"]: t["state"] for t in _history(client)["tasks"]}
                return states.get(ok) == "SUCCESS" and states.get(bad) == "FAILURE"

            assert _until(both_done), _history(client)
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
        assert first.returncode == 0
        # a new process, on another port: it has seen no event yet, the store has them all
        port = free_port()
        second = _serve(tmp_path, env, "--port", str(port))
        _listening(port, second)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            found = _history(client, q="KAPUT-7")  # error text, any case
            assert [(t["id"], t["state"]) for t in found["tasks"]] == [(bad, "FAILURE")]
            assert found["tasks"][0]["exception_type"] == "ValueError"
            found = _history(client, q="[20,22]")  # argument text
            assert [t["id"] for t in found["tasks"]] == [ok]
            assert _history(client, state="SUCCESS", task="dash.add")["total"] == 1
            entry = client.get(f"/api/history/{ok}").json()["task"]
            kinds = [e["type"] for e in entry["timeline"]]
            assert "task-succeeded" in kinds and entry["args"] == "[20,22]"
            page = client.get("/tasks", params={"state": "FAILURE"}).text
            assert bad in page and ok not in page
            r = client.post(f"/api/history/{bad}/retry")  # its exact arguments were stored
            assert r.status_code == 202
    finally:
        for proc in (first, second):
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)  # also closes its stdout pipe
        stop(worker)


SUCCEEDED = EventType.TASK_SUCCEEDED


async def _in_stream(app: App, task_id: str) -> None:
    """Until the worker's task-succeeded of `task_id` is in the event stream (it flushes its
    events in batches), so it was emitted while no dashboard ran."""
    async with asyncio.timeout(30), follow_after(app, None) as records:
        async for _position, events in records:
            for e in events:
                if isinstance(e, TaskEvent) and (e.type, e.task_id) == (SUCCEEDED, task_id):
                    return


async def test_events_emitted_while_no_dashboard_ran_reach_its_history(
    tmp_path: Path, url: str, namespace: str
) -> None:
    from aiotask.dashboard import create_app

    (tmp_path / "proc_tasks.py").write_text(SHIM)
    (tmp_path / "logs").mkdir(exist_ok=True)
    env = worker_env(tmp_path, url, AIOTASK_KEY_PREFIX=namespace, PYTHONPATH=f"{tmp_path}:{ROOT}")
    worker = start_worker(tmp_path, env, "-E", "-c", "4")
    app = make_app(broker=url, key_prefix=namespace, events=True)

    async def states(web: Starlette, **params: Any) -> dict[str, str]:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            r = await client.get("/api/history", params=params)
        assert r.status_code == 200, r.text
        return {t["id"]: t["state"] for t in r.json()["tasks"]}

    async def until(check: Any) -> Any:
        async with asyncio.timeout(30):
            while not (value := await check()):
                await asyncio.sleep(0.1)
            return value

    try:
        async with app:
            add = app.tasks["dash.add"]
            early = await add.send(1, 2)
            assert await early.get(timeout=30) == 3
            await _in_stream(app, early.id)
            # the first dashboard ever: no saved position, it folds all the stream keeps
            web = create_app(app)
            dash = web.state.dashboard
            try:
                assert (await states(web)).get(early.id) in (None, "PENDING", "SUCCESS")
                await until(lambda: _is(states(web), early.id, "SUCCESS"))
                store = await dash.history.store(app)
                await until(lambda: _saved(store, dash.history))
            finally:
                await dash.close()
            saved = await store.get_cursor()
            assert saved is not None
            # no dashboard runs: these events wait in the stream
            late = [await add.send(i, 100) for i in range(3)]
            assert [await r.get(timeout=30) for r in late] == [100, 101, 102]
            await _in_stream(app, late[-1].id)
            web = create_app(app)
            dash = web.state.dashboard
            try:
                await states(web)  # starts following: from the saved position
                for r in late:
                    await until(lambda r=r: _is(states(web), r.id, "SUCCESS"))
                entry = await dash.history.get(app, early.id)
                assert entry is not None
                kinds = [t for t, _, _ in entry.timeline]
                assert kinds.count("task-succeeded") == 1  # resumed, not read again
                await until(lambda: _saved(store, dash.history))
                assert await store.get_cursor() != saved
            finally:
                await dash.close()
    finally:
        stop(worker)


async def _is(found: Awaitable[dict[str, str]], task_id: str, state: str) -> bool:
    return (await found).get(task_id) == state


async def _saved(store: HistoryStore, history: History) -> bool:
    """The writer saved the position of the last record the follower queued."""
    return history.cursor is not None and await store.get_cursor() == history.cursor


async def test_a_workflow_page_draws_a_chain_and_a_chord(stack: Stack) -> None:
    await stack.client.get("/api/history")  # starts following events
    await asyncio.wait_for(stack.web.state.dashboard.history.following.wait(), 10)
    app = stack.app
    add, echo = app.tasks["dash.add"], app.tasks["dash.echo"]
    flow = chain(add.s(1, 2), add.s(10), chord([echo.si("a"), echo.si("b")], echo.s()))
    last = await flow.send()
    assert (await last.get(timeout=30)) == ["a", "b"]

    async def root() -> str:
        r = await stack.client.get("/api/history", params={"task": "dash.add", "q": "[1,2]"})
        tasks = r.json()["tasks"]
        return str(tasks[0]["id"]) if tasks else ""

    first = await stack.until(root)
    assert first, (await stack.client.get("/api/history")).json()
    body = last.id
    page = await _wait_states(stack, first)
    states = dict(re.findall(r'data-node="([^"]+)" data-state="([A-Z]+)"', page))
    assert len(states) == 5 and set(states.values()) == {"SUCCESS"}, states
    assert states[first] == "SUCCESS" and states[body] == "SUCCESS"
    assert page.count('class="edge"') == 5  # 1 -> 2 -> both members -> the body (joined)
    assert "<script>" not in page.split("</header>", 1)[-1]
    # a step's page links to the graph; the overview charts the five successes
    detail = (await stack.client.get(f"/tasks/{body}")).text
    assert f'href="/canvas/{first}"' in detail
    overview = (await stack.client.get("/")).text
    assert 'id="throughput"' in overview and 'class="bar-ok"' in overview
    assert re.search(r"Last hour <small>(\d+) succeeded", overview)


async def _wait_states(stack: Stack, root: str) -> str:
    """The workflow page once it shows five finished tasks (workers' events are async)."""

    async def drawn() -> str:
        page = (await stack.client.get(f"/canvas/{root}")).text
        states = re.findall(r'data-node="[^"]+" data-state="([A-Z]+)"', page)
        return page if len(states) == 5 and set(states) == {"SUCCESS"} else ""

    page: str = await stack.until(drawn, timeout=30)
    return page or (await stack.client.get(f"/canvas/{root}")).text
