"""The HTTP API against a real worker process, on Redis, SQLite and RabbitMQ (tests that run no
task use the `web` fixture: the same dashboard, without the worker process)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.dashboard.conftest import Stack, Web

JSON = {"content-type": "application/json"}


async def test_send_by_name_and_read_the_result(stack: Stack) -> None:
    r = await stack.client.post("/api/tasks/dash.add", json={"args": [2], "kwargs": {"y": 40}})
    assert r.status_code == 202, r.text
    task_id = r.json()["id"]
    body = await stack.result(task_id, "SUCCESS")
    assert body == {"id": task_id, "state": "SUCCESS", "task": "dash.add", "result": 42}


async def test_options_are_applied(stack: Stack) -> None:
    r = await stack.client.post(
        "/api/tasks/dash.echo",
        json={"args": ["x"], "options": {"task_id": "my-own-id", "countdown": 0.2}},
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"id": "my-own-id"}
    assert (await stack.result("my-own-id", "SUCCESS"))["result"] == "x"


async def test_a_failure_reads_as_an_error(stack: Stack) -> None:
    r = await stack.client.post("/api/tasks/dash.boom", json={"args": ["it broke"]})
    body = await stack.result(r.json()["id"], "FAILURE")
    assert body["state"] == "FAILURE"
    assert "result" not in body
    assert body["error"]["type"] == "ValueError"
    assert body["error"]["message"] == "it broke"
    assert "Traceback" in body["error"]["traceback"]


async def test_an_unknown_result_is_pending(web: Web) -> None:
    r = await web.client.get("/api/results/no-such-task")
    assert r.json() == {"id": "no-such-task", "state": "PENDING", "result": None}


BAD_BODIES = [
    (b"[1, 2]", 422, "must be a JSON object"),
    (b"{not json", 400, "not valid JSON"),
    (b'{"args": 3}', 422, "'args' must be an array"),
    (b'{"kwargs": []}', 422, "'kwargs' must be an object"),
    (b'{"args": [1]}', 422, "missing a required argument: 'y'"),
    (b'{"args": [1, 2, 3]}', 422, "too many positional arguments"),
    (b'{"args": [1, 2], "extra": 1}', 422, "unknown field(s) extra"),
    (b'{"args": [1, 2], "options": {"countdown": "soon"}}', 422, "'countdown' must be"),
    (b'{"args": [1, 2], "options": {"bogus": 1}}', 422, "unknown field(s) bogus"),
    (b'{"args": [1, 2], "options": {"eta": "tomorrow"}}', 422, "ISO 8601"),
    (b'{"args": [1, 2], "options": {"headers": {"a": 1}}}', 422, "'headers' must map"),
    (b'{"args": [1, 2], "options": {"priority": true}}', 422, "got a boolean"),
]


async def test_bad_bodies_get_a_4xx_with_a_reason(web: Web) -> None:
    for body, status, reason in BAD_BODIES:
        r = await web.client.post("/api/tasks/dash.add", content=body, headers=JSON)
        assert r.status_code == status, (body, r.text)
        assert reason in r.json()["error"], (body, r.text)


async def test_wrong_content_type_unknown_task_and_unknown_path(web: Web) -> None:
    r = await web.client.post("/api/tasks/dash.add", data={"args": "[1, 2]"})
    assert r.status_code == 415
    assert "application/json" in r.json()["error"]
    r = await web.client.post("/api/tasks/dash.nope", json={})
    assert r.status_code == 404
    assert "dash.nope" in r.json()["error"]
    r = await web.client.post("/api/tasks/aiotask.map", json={})
    assert r.status_code == 404  # internal tasks are not sent from outside
    r = await web.client.get("/api/nothing-here")
    assert r.status_code == 404
    r = await web.client.get("/api/tasks/dash.add")
    assert r.status_code == 405


async def test_revoke_a_waiting_task(stack: Stack) -> None:
    r = await stack.client.post(
        "/api/tasks/dash.echo", json={"args": [1], "options": {"countdown": 30}}
    )
    task_id = r.json()["id"]
    r = await stack.client.post(f"/api/results/{task_id}/revoke", json={"terminate": False})
    assert r.status_code == 202
    assert r.json() == {"id": task_id, "revoked": True, "terminate": False}
    assert (await stack.result(task_id, "REVOKED"))["state"] == "REVOKED"
    r = await stack.client.post(f"/api/results/{task_id}/revoke", json={"terminate": "yes"})
    assert r.status_code == 422


async def test_terminate_a_running_task(stack: Stack) -> None:
    history = stack.web.state.dashboard.history
    await stack.client.get("/api/history")  # starts following events
    await asyncio.wait_for(history.following.wait(), 10)
    r = await stack.client.post("/api/tasks/dash.slow", json={"args": [60]})
    task_id = r.json()["id"]

    async def started() -> bool:
        r = await stack.client.get("/api/history", params={"state": "STARTED"})
        return any(t["id"] == task_id for t in r.json()["tasks"])

    assert await stack.until(started), "the task-started event never arrived"
    r = await stack.client.post(f"/api/results/{task_id}/revoke", json={"terminate": True})
    assert r.status_code == 202
    assert (await stack.result(task_id, "REVOKED"))["state"] == "REVOKED"

    async def revoked_event() -> bool:
        r = await stack.client.get(f"/api/history/{task_id}")
        return bool(r.json()["task"]["state"] == "REVOKED")

    assert await stack.until(revoked_event)
    entry = (await stack.client.get(f"/api/history/{task_id}")).json()["task"]
    assert [e["type"] for e in entry["timeline"]][-1] == "task-revoked"
    assert entry["args"] == "[60]"  # JSON text (cut to 2,000 characters)


async def test_workers_and_queues(stack: Stack) -> None:
    async def online() -> list[dict[str, Any]]:
        r = await stack.client.get("/api/workers")
        return [w for w in r.json()["workers"] if w["state"] == "online"]

    workers = await stack.until(online)
    assert [w["pid"] for w in workers] == [stack.worker.pid]
    assert workers[0]["queues"] == ["default"]

    async def listed() -> dict[str, dict[str, Any]]:
        # Once (RabbitMQ 3.10, in a CI rehearsal) the server closed the API's connection with
        # INTERNAL_ERROR while the worker's new key stream was starting, and the call failed;
        # the connection comes back by itself, and the next call answers.
        r = await stack.client.get("/api/queues")
        return {q["queue"]: q for q in r.json()["queues"]} if r.status_code == 200 else {}

    queues = await stack.until(listed)
    assert set(queues["default"]) == {"queue", "ready", "delayed", "in_flight", "dead"}


async def test_dead_letters_list_and_replay(stack: Stack) -> None:
    ids = [
        (await stack.client.post("/api/tasks/dash.poison", json={"args": [x]})).json()["id"]
        for x in (1, 2)
    ]

    async def dead() -> list[dict[str, Any]]:
        r = await stack.client.get("/api/dead-letters")
        found: list[dict[str, Any]] = r.json()["dead_letters"]
        return found if len(found) == 2 else []

    found = await stack.until(dead)
    assert {(d["id"], d["task"], d["reason"]) for d in found} == {
        (ids[0], "dash.poison", "poison pill 1"),
        (ids[1], "dash.poison", "poison pill 2"),
    }
    assert sorted(d["args"] for d in found) == [[1], [2]]
    queues = {q["queue"]: q for q in (await stack.client.get("/api/queues")).json()["queues"]}
    assert queues["default"]["dead"] == 2

    r = await stack.client.post("/api/dead-letters/replay", json={})
    assert r.status_code == 422  # neither ids nor all
    (stack.directory / "logs" / "allow").write_text("")
    r = await stack.client.post("/api/dead-letters/replay", json={"ids": [ids[0], "nope"]})
    assert r.status_code == 200
    assert r.json() == {"replayed": [ids[0]], "missing": ["nope"]}
    assert (await stack.result(ids[0], "SUCCESS"))["result"] == 10
    r = await stack.client.post("/api/dead-letters/purge", json={"all": True})
    assert r.json() == {"purged": [ids[1]], "missing": []}
    assert (await stack.client.get("/api/dead-letters")).json() == {"dead_letters": []}


async def test_openapi_document_names_every_api_route(web: Web) -> None:
    r = await web.client.get("/api/openapi.json")
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = {getattr(route, "path", "") for route in web.web.routes}
    routes = {p for p in paths if p.startswith("/api/")} - {"/api/openapi.json"}
    assert set(doc["paths"]) == routes
    assert doc["paths"]["/api/tasks/{name}"]["post"]["responses"]["202"]


async def test_revoke_everything_a_filter_matches_and_retry_a_failure(stack: Stack) -> None:
    await stack.client.get("/api/history")
    await asyncio.wait_for(stack.web.state.dashboard.history.following.wait(), 10)
    later = {"countdown": 60}
    waiting = [
        (
            await stack.client.post("/api/tasks/dash.echo", json={"args": [i], "options": later})
        ).json()["id"]
        for i in range(3)
    ]
    done = (await stack.client.post("/api/tasks/dash.add", json={"args": [1, 1]})).json()["id"]
    await stack.result(done, "SUCCESS")
    r = await stack.client.post("/api/history/revoke", json={"q": "dash.echo"})
    assert r.status_code == 200
    assert sorted(r.json()["revoked"]) == sorted(waiting)
    for task_id in waiting:
        assert (await stack.result(task_id, "REVOKED"))["state"] == "REVOKED"
    r = await stack.client.post("/api/history/revoke", json={"state": "BOGUS"})
    assert r.status_code == 422

    failed = (await stack.client.post("/api/tasks/dash.boom", json={"args": ["once"]})).json()["id"]
    await stack.result(failed, "FAILURE")

    async def failed_seen() -> bool:
        row = await stack.web.state.dashboard.history.get(stack.app, failed)
        return row is not None and row.state == "FAILURE"

    assert await stack.until(failed_seen)
    r = await stack.client.post(f"/api/history/{failed}/retry")
    assert r.status_code == 202
    again = r.json()["id"]
    assert again != failed and r.json()["retry_of"] == failed
    assert (await stack.result(again, "FAILURE"))["error"]["message"] == "once"
    assert (await stack.client.post(f"/api/history/{done}/retry")).status_code == 409
    assert (await stack.client.post("/api/history/unknown/retry")).status_code == 404


async def test_retry_and_delete_everything_a_filter_matches(stack: Stack) -> None:
    history = stack.web.state.dashboard.history
    await stack.client.get("/api/history")
    await asyncio.wait_for(history.following.wait(), 10)

    async def send(name: str, *args: object) -> str:
        r = await stack.client.post(f"/api/tasks/{name}", json={"args": list(args)})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    async def seen(task_id: str, state: str) -> None:
        async def check() -> bool:
            row = await history.get(stack.app, task_id)
            return row is not None and row.state == state

        assert await stack.until(check), await history.get(stack.app, task_id)

    failed = [await send("dash.boom", f"bulk-{i}") for i in range(2)]
    ok = await send("dash.add", 2, 3)
    for task_id in failed:
        await stack.result(task_id, "FAILURE")
        await seen(task_id, "FAILURE")
    await stack.result(ok, "SUCCESS")
    await seen(ok, "SUCCESS")

    r = await stack.client.post("/api/history/retry", json={"task": "dash.boom", "state": "BOGUS"})
    assert r.status_code == 422
    r = await stack.client.post("/api/history/retry", json={"q": "bulk-", "extra": 1})
    assert r.status_code == 422
    r = await stack.client.post("/api/history/retry", json={"task": "dash.boom"})
    assert r.status_code == 202, r.text
    retried = r.json()["retried"]
    assert sorted(retried) == sorted(failed)  # the success is not sent again
    for old, new in retried.items():
        assert new not in failed
        body = await stack.result(new, "FAILURE")
        assert body["error"]["message"] == old_message(failed, old)
        await seen(new, "FAILURE")
    # nothing retryable (a success only): nothing sent
    r = await stack.client.post("/api/history/retry", json={"task": "dash.add"})
    assert r.status_code == 202 and r.json()["retried"] == {}

    assert (await stack.client.post("/api/history/delete", json={})).status_code == 422
    r = await stack.client.post("/api/history/delete", json={"task": "dash.boom"})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["deleted"]) == sorted([*failed, *retried.values()])
    r = await stack.client.get("/api/history", params={"task": "dash.boom"})
    assert r.json()["total"] == 0
    for task_id in [*failed, *retried.values()]:
        assert (await stack.client.get(f"/api/results/{task_id}")).json()["state"] == "PENDING"
        assert (await stack.client.get(f"/api/history/{task_id}")).status_code == 404
    assert (await stack.client.get(f"/api/results/{ok}")).json()["state"] == "SUCCESS"
    r = await stack.client.get("/api/history", params={"task": "dash.add"})
    assert [t["id"] for t in r.json()["tasks"]] == [ok]


def old_message(failed: list[str], task_id: str) -> str:
    return f"bulk-{failed.index(task_id)}"
