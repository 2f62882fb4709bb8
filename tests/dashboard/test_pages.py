"""The server-rendered pages against a real worker on Redis: each renders, user data is
escaped (a `<script>` argument stays inert), and the forms' actions work with their token."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from aiotask.history import HistoryQuery

if TYPE_CHECKING:
    from tests.dashboard.conftest import Stack

SCRIPT = "<script>alert('pwned')</script>"
IMG = '"><img src=x onerror=alert(1)>'


async def follow(stack: Stack) -> None:
    await stack.client.get("/api/history")
    await asyncio.wait_for(stack.web.state.dashboard.history.following.wait(), 10)


def inert(html: str) -> None:
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert re.findall(r"<script[^>]*>", html) in ([], ['<script src="/static/dashboard.js">'])


async def test_a_script_argument_renders_inert(redis_stack: Stack) -> None:
    stack = redis_stack
    await follow(stack)
    r = await stack.client.post(
        "/api/tasks/dash.echo", json={"args": [SCRIPT], "options": {"task_id": IMG}}
    )
    task_id = r.json()["id"]
    assert task_id == IMG
    await stack.result(task_id, "SUCCESS")
    fail = (await stack.client.post("/api/tasks/dash.boom", json={"args": [SCRIPT]})).json()["id"]
    await stack.result(fail, "FAILURE")

    async def listed() -> str:
        page = (await stack.client.get("/tasks")).text
        return page if fail in page and "&lt;img src=x" in page else ""

    tasks_page = await stack.until(listed)
    assert tasks_page, "the tasks never reached the history"
    inert(tasks_page)
    page = await stack.client.get("/tasks/" + task_id)
    assert page.status_code == 200
    inert(page.text)
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page.text  # args and result
    assert page.text.count("&lt;script&gt;") >= 2
    assert "script-src 'self'" in page.headers["content-security-policy"]
    failed = await stack.client.get(f"/tasks/{fail}")
    inert(failed.text)
    assert "ValueError" in failed.text and "Traceback" in failed.text
    inert((await stack.client.get("/tasks", params={"q": SCRIPT})).text)
    inert((await stack.client.get("/", params={"msg": SCRIPT})).text)


async def test_every_page_renders(redis_stack: Stack) -> None:
    stack = redis_stack
    await follow(stack)
    task_id = (await stack.client.post("/api/tasks/dash.add", json={"args": [1, 2]})).json()["id"]
    await stack.result(task_id, "SUCCESS")

    async def overview() -> str:
        page = (await stack.client.get("/")).text
        return page if "online" in page and "SUCCESS 1" in page else ""

    page = await stack.until(overview)
    assert page, "no worker online or no task counted on the overview"
    assert 'data-queue="default"' in page
    tasks = (await stack.client.get("/tasks", params={"state": "SUCCESS"})).text
    assert task_id in tasks
    assert task_id not in (await stack.client.get("/tasks", params={"state": "FAILURE"})).text
    assert task_id in (await stack.client.get("/tasks", params={"q": task_id[:8]})).text
    detail = (await stack.client.get(f"/tasks/{task_id}")).text
    assert "task-succeeded" in detail and "args: [1,2]" in detail
    assert "No dead letters" in (await stack.client.get("/dead-letters")).text
    schedules = (await stack.client.get("/schedules")).text
    assert 'data-schedule="nightly-sum"' in schedules and "dash.add" in schedules
    for partial in ("/partials", "/partials/tasks", f"/partials/tasks/{task_id}"):
        r = await stack.client.get(partial)
        assert r.status_code == 200 and "<html" not in r.text
    assert (await stack.client.get("/tasks", params={"state": "NOPE"})).status_code == 422
    js = await stack.client.get("/static/dashboard.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert (await stack.client.get("/static/../app.py")).status_code == 404


async def test_dead_letter_replay_and_revoke_through_the_forms(redis_stack: Stack) -> None:
    stack = redis_stack
    dead = (await stack.client.post("/api/tasks/dash.poison", json={"args": [7]})).json()["id"]

    async def listed() -> str:
        page = (await stack.client.get("/dead-letters")).text
        return page if dead in page else ""

    page = await stack.until(listed)
    assert "poison pill 7" in page
    token = stack.client.cookies["aiotask_csrf"]
    assert f'name="csrf" value="{token}"' in page
    (stack.directory / "logs" / "allow").write_text("")
    r = await stack.client.post(
        "/actions/dead-letters",
        data={"csrf": token, "op": "replay", "id": dead, "next": "/dead-letters"},
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/dead-letters?msg=replayed+1")
    assert (await stack.result(dead, "SUCCESS"))["result"] == 70

    waiting = (
        await stack.client.post(
            "/api/tasks/dash.echo", json={"args": [1], "options": {"countdown": 60}}
        )
    ).json()["id"]
    r = await stack.client.post(
        "/actions/revoke", data={"csrf": token, "id": waiting, "next": f"/tasks/{waiting}"}
    )
    assert r.status_code == 303
    assert (await stack.result(waiting, "REVOKED"))["state"] == "REVOKED"
    page = (await stack.client.get(f"/tasks/{waiting}")).text
    assert 'id="task-state">REVOKED' in page and 'id="revoke"' not in page


async def test_rate_limit_and_shutdown_reach_the_worker(redis_stack: Stack) -> None:
    stack = redis_stack

    async def online() -> list[str]:
        r = await stack.client.get("/api/workers")
        return [w["name"] for w in r.json()["workers"] if w["state"] == "online"]

    names = await stack.until(online)
    assert names, "the worker never came online"
    r = await stack.client.post("/api/workers/rate-limit", json={"task": "dash.add", "rate": "5/s"})
    assert r.status_code == 200
    assert list(r.json()["replies"]) == names
    assert "error" not in r.json()["replies"][names[0]]
    r = await stack.client.post("/api/workers/rate-limit", json={"task": "dash.add", "rate": "x"})
    assert r.status_code == 422 and "bad rate limit" in r.json()["error"]
    r = await stack.client.post("/api/workers/shutdown", json={})
    assert r.status_code == 422  # never "every worker" by default

    page = await stack.client.get("/")
    token = stack.client.cookies["aiotask_csrf"]
    r = await stack.client.post(
        "/actions/rate-limit", data={"csrf": token, "task": "dash.add", "rate": "0", "next": "/"}
    )
    assert r.status_code == 303
    assert "rate+limit+of+dash.add+set+to+0+on+1+worker" in r.headers["location"]
    assert f'name="worker" value="{names[0]}"' in page.text
    r = await stack.client.post(
        "/actions/shutdown", data={"csrf": token, "worker": names[0], "next": "/"}
    )
    assert r.status_code == 303
    assert await asyncio.to_thread(stack.worker.wait, 30) == 0  # a warm shutdown


async def test_bulk_retry_and_delete_forms(redis_stack: Stack) -> None:
    stack = redis_stack
    await follow(stack)
    history = stack.web.state.dashboard.history
    r = await stack.client.post("/api/tasks/dash.boom", json={"args": ["form-1"]})
    failed = r.json()["id"]
    await stack.result(failed, "FAILURE")

    async def seen() -> bool:
        row = await history.get(stack.app, failed)
        return row is not None and row.state == "FAILURE"

    assert await stack.until(seen)
    page = (await stack.client.get("/tasks", params={"q": "form-1"})).text
    assert 'id="retry-matching"' in page and "Delete 1</button>" in page
    assert 'id="delete-matching"' not in (await stack.client.get("/tasks")).text  # no filter
    token = stack.client.cookies["aiotask_csrf"]
    form = {"q": "form-1", "state": "", "next": "/tasks"}
    r = await stack.client.post("/actions/retry-matching", data=form)  # no CSRF token
    assert r.status_code == 403
    r = await stack.client.post("/actions/retry-matching", data={"csrf": token, **form})
    assert r.status_code == 303 and "sent+1+failed+task" in r.headers["location"]
    rows, _ = await history.search(stack.app, HistoryQuery("form-1", limit=10))
    again = [row.id for row in rows if row.id != failed]
    assert len(again) == 1
    await stack.result(again[0], "FAILURE")
    r = await stack.client.post(
        "/actions/delete-matching", data={"csrf": token, **form, "state": "FAILURE"}
    )
    assert r.status_code == 303 and "deleted+" in r.headers["location"]
    assert await history.get(stack.app, failed) is None
    assert (await stack.client.get(f"/api/results/{failed}")).json()["state"] == "PENDING"


async def test_bulk_revoke_and_retry_forms(redis_stack: Stack) -> None:
    stack = redis_stack
    await follow(stack)
    later = {"countdown": 60}
    waiting = [
        (
            await stack.client.post("/api/tasks/dash.echo", json={"args": [i], "options": later})
        ).json()["id"]
        for i in range(2)
    ]
    page = (await stack.client.get("/tasks", params={"q": "dash.echo"})).text
    assert "Revoke 2 unfinished" in page
    assert 'id="revoke-matching"' not in (await stack.client.get("/tasks")).text  # no filter
    token = stack.client.cookies["aiotask_csrf"]
    r = await stack.client.post(
        "/actions/revoke-matching",
        data={"csrf": token, "q": "dash.echo", "state": "", "next": "/tasks"},
    )
    assert r.status_code == 303 and "revoked+2+unfinished" in r.headers["location"]
    for task_id in waiting:
        await stack.result(task_id, "REVOKED")

    failed = (await stack.client.post("/api/tasks/dash.boom", json={"args": ["x"]})).json()["id"]
    await stack.result(failed, "FAILURE")

    async def retry_shown() -> bool:
        return 'id="retry"' in (await stack.client.get(f"/tasks/{failed}")).text

    assert await stack.until(retry_shown)
    r = await stack.client.post("/actions/retry", data={"csrf": token, "id": failed, "next": "/"})
    assert r.status_code == 303 and f"sent+{failed}+again+as" in r.headers["location"]
