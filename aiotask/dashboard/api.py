"""The JSON HTTP API: send tasks by name, read results, revoke, workers, queues, dead letters.

This is how services in other languages use aiotask (see docs/dashboard.md). Every handler
validates its input and answers a wrong request with a 4xx JSON `{"error": reason}`; the
names follow the "Dashboard HTTP API" of the API contract, the rest extends it.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from aiotask._time import now
from aiotask.canvas.primitives import MAP_TASK, STARMAP_TASK
from aiotask.dashboard.audit import audit
from aiotask.dashboard.core import (
    Problem,
    dashboard_of,
    history_query,
    json_body,
    json_response,
    only_keys,
    query_int,
    str_list,
    want,
)
from aiotask.dashboard.history import record_dict
from aiotask.dashboard.live import event_stream
from aiotask.dashboard.openapi import openapi_document
from aiotask.exceptions import ConfigurationError, ResultSignatureError
from aiotask.result import verified

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from aiotask.app import App
    from aiotask.backends.base import ResultRecord
    from aiotask.task import Task

#: Per-call options the HTTP API accepts, and the JSON types of each.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "countdown": (int, float),
    "eta": (int, float, str),
    "expires": (int, float),
    "priority": (int,),
    "queue": (str,),
    "task_id": (str,),
    "headers": (dict,),
    "ignore_result": (bool,),
}
#: Internal tasks that are never sent by name from outside.
HIDDEN_TASKS = frozenset({MAP_TASK, STARMAP_TASK})


def public_task(app: App, name: str) -> Task[Any, Any]:
    task = app.tasks.get(name)
    if task is None or name in HIDDEN_TASKS:
        raise Problem(404, f"no task named {name!r} is registered in app {app.main!r}")
    return task


def check_arguments(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse (422) arguments the task's function cannot take, before anything is sent."""
    try:
        signature = inspect.signature(task.fn)
    except (TypeError, ValueError):  # a callable without a signature: let the worker judge
        return
    params = list(signature.parameters.values())
    if task.options.bind and params:
        params = params[1:]
    try:
        signature.replace(parameters=params).bind(*args, **kwargs)
    except TypeError as exc:
        raise Problem(422, f"arguments do not fit {task.name}: {exc}") from None


def parse_options(raw: dict[str, Any]) -> dict[str, Any]:
    only_keys(raw, set(OPTION_TYPES))
    options: dict[str, Any] = {}
    for key, kinds in OPTION_TYPES.items():
        value = want(raw, key, kinds, None)
        if value is not None:
            options[key] = value
    if isinstance(options.get("eta"), str):
        try:
            eta = datetime.fromisoformat(options["eta"])
        except ValueError:
            raise Problem(422, "'eta' must be unix seconds or an ISO 8601 date-time") from None
        options["eta"] = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
    headers = options.get("headers", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise Problem(422, "'headers' must map strings to strings")
    for key in ("countdown", "expires"):
        if key in options and options[key] < 0:
            raise Problem(422, f"{key!r} must not be negative")
    for key in ("task_id", "queue"):
        if key in options and not 0 < len(options[key]) <= 200:
            raise Problem(422, f"{key!r} must be 1 to 200 characters")
    return options


async def send_task(request: Request) -> Response:
    dash = dashboard_of(request)
    task = public_task(dash.app, request.path_params["name"])
    body = await json_body(request)
    only_keys(body, {"args", "kwargs", "options"})
    args = want(body, "args", list, [])
    kwargs = want(body, "kwargs", dict, {})
    options = parse_options(want(body, "options", dict, {}))
    check_arguments(task, args, kwargs)
    try:
        result = await dash.app.send_task(task.name, args, kwargs, **options)
    except ConfigurationError as exc:
        raise Problem(422, str(exc)) from None
    await dash.history.sent(dash.app, result.id, task.name, args, kwargs)
    audit(request, "send", task.name, f"sent as {result.id}")
    return json_response({"id": result.id}, 202)


async def _record(app: App, task_id: str) -> ResultRecord | None:
    try:
        backend = await app.result_backend()
    except ConfigurationError as exc:
        raise Problem(503, f"results are not available: {exc}") from None
    try:  # result_signing: a forged record is never shown as the task's result
        return verified(await backend.get(task_id), task_id, app.result_keyring)
    except ResultSignatureError as exc:
        raise Problem(502, str(exc)) from None


def result_view(task_id: str, record: ResultRecord | None) -> dict[str, Any]:
    """The API's view of a result record (PENDING when there is none)."""
    if record is None:
        return {"id": task_id, "state": "PENDING", "result": None}
    out: dict[str, Any] = {"id": task_id, "state": record.state}
    if record.task:
        out["task"] = record.task
    if record.exception is not None:
        out["error"] = {
            "type": record.exception.type.rsplit(".", 1)[-1],
            "message": record.exception.message,
            "traceback": record.exception.traceback,
        }
    else:
        out["result"] = record.result
    return out


async def get_result(request: Request) -> Response:
    task_id = request.path_params["id"]
    record = await _record(dashboard_of(request).app, task_id)
    return json_response(result_view(task_id, record))


async def revoke(request: Request) -> Response:
    dash = dashboard_of(request)
    body = await json_body(request)
    only_keys(body, {"terminate"})
    terminate = want(body, "terminate", bool, False)
    task_id = request.path_params["id"]
    await dash.app.control.revoke([task_id], terminate=terminate)
    audit(request, "terminate" if terminate else "revoke", task_id)
    return json_response({"id": task_id, "revoked": True, "terminate": terminate}, 202)


async def workers(request: Request) -> Response:
    found = await dashboard_of(request).app.control.workers()
    at = now()
    return json_response({"workers": [w.to_dict(at) for w in found]})


async def queues(request: Request) -> Response:
    stats = await dashboard_of(request).app.dead_letters.queue_stats()
    return json_response(
        {
            "queues": [
                {
                    "queue": s.queue,
                    "ready": s.ready,
                    "delayed": s.delayed,
                    "in_flight": s.in_flight,
                    "dead": s.dead,
                }
                for s in stats
            ]
        }
    )


async def dead_letters(request: Request) -> Response:
    params = request.query_params
    limit = query_int(request, "limit", 100, 1, 10_000)
    found = await dashboard_of(request).app.dead_letters.list(
        queue=params.get("queue") or None,
        task=params.get("task") or None,
        reason=params.get("reason") or None,
        limit=limit,
    )
    return json_response({"dead_letters": [d.to_dict(full=True) for d in found]})


async def _dead_letter_action(request: Request, verb: str) -> Response:
    body = await json_body(request)
    only_keys(body, {"ids", "all", "queue", "task", "reason"})
    ids = str_list(body, "ids")
    every = want(body, "all", bool, False)
    if (ids is not None and every) or (ids is None and not every):
        raise Problem(422, 'give "ids" (a list of task ids) or "all": true, not both')
    if ids is not None and not ids:
        raise Problem(422, '"ids" must not be empty')
    filters = {k: want(body, k, str, None) for k in ("queue", "task", "reason")}
    dl = dashboard_of(request).app.dead_letters
    action = dl.replay if verb == "replayed" else dl.purge
    report = await action(ids, **filters)
    what = ",".join(ids) if ids is not None else f"all {filters}"
    audit(request, f"dead-letters {verb}", what, f"{len(report.ids)} done")
    return json_response({verb: report.ids, "missing": report.missing})


async def replay(request: Request) -> Response:
    return await _dead_letter_action(request, "replayed")


async def purge(request: Request) -> Response:
    return await _dead_letter_action(request, "purged")


async def schedules(request: Request) -> Response:
    found = await dashboard_of(request).app.schedules.list()
    return json_response({"schedules": [s.to_dict() for s in found]})


async def schedule_action(request: Request) -> Response:
    name, action = request.path_params["name"], request.path_params["action"]
    api = dashboard_of(request).app.schedules
    try:
        if action == "pause":
            await api.pause(name)
        elif action == "resume":
            await api.resume(name)
        elif action == "run-now":
            result = await api.run_now(name)
            audit(request, "schedule run-now", name, f"sent as {result.id}")
            return json_response({"name": name, "id": result.id}, 202)
        else:
            raise Problem(404, f"unknown schedule action {action!r}: pause, resume or run-now")
    except ConfigurationError as exc:
        raise Problem(404, str(exc)) from None
    audit(request, f"schedule {action}", name)
    return json_response({"name": name, "done": action})


async def rate_limit(request: Request) -> Response:
    body = await json_body(request)
    only_keys(body, {"task", "rate", "destination"})
    task = want(body, "task", str, None)
    rate = want(body, "rate", (str, int, float), None)
    if not task or rate is None:
        raise Problem(422, 'give "task" (a task name) and "rate" ("10/s", "100/m"; 0: none)')
    replies = await dashboard_of(request).app.control.rate_limit(
        task, rate, destination=str_list(body, "destination")
    )
    audit(request, "rate-limit", task, f"{rate} on {', '.join(replies) or 'no worker'}")
    return json_response({"replies": replies})


async def shutdown(request: Request) -> Response:
    body = await json_body(request)
    only_keys(body, {"destination"})
    destination = str_list(body, "destination")
    if not destination:
        raise Problem(422, '"destination" must list the workers to shut down')
    replies = await dashboard_of(request).app.control.shutdown(destination=destination)
    audit(
        request, "shutdown", ",".join(destination), f"replies from {', '.join(replies) or 'none'}"
    )
    return json_response({"replies": replies})


async def history(request: Request) -> Response:
    dash = dashboard_of(request)
    query = history_query(
        request.query_params,
        limit=query_int(request, "limit", 50, 1, 1000),
        offset=query_int(request, "offset", 0, 0, 10_000_000),
    )
    rows, total = await dash.history.search(dash.app, query)
    return json_response({"tasks": [record_dict(r) for r in rows], "total": total})


async def history_entry(request: Request) -> Response:
    dash = dashboard_of(request)
    task_id = request.path_params["id"]
    row = await dash.history.get(dash.app, task_id)
    record = await _record(dash.app, task_id)
    if row is None and record is None:
        raise Problem(404, f"no task {task_id!r} in the history or the result backend")
    return json_response(
        {
            "task": record_dict(row, full=True) if row else None,
            "result": result_view(task_id, record),
        }
    )


async def openapi(request: Request) -> Response:
    return json_response(openapi_document(request.scope.get("root_path", "")))


def api_routes() -> list[Route]:
    return [
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/tasks/{name}", send_task, methods=["POST"]),
        Route("/api/results/{id}", get_result, methods=["GET"]),
        Route("/api/results/{id}/revoke", revoke, methods=["POST"]),
        Route("/api/workers", workers, methods=["GET"]),
        Route("/api/workers/rate-limit", rate_limit, methods=["POST"]),
        Route("/api/workers/shutdown", shutdown, methods=["POST"]),
        Route("/api/queues", queues, methods=["GET"]),
        Route("/api/dead-letters", dead_letters, methods=["GET"]),
        Route("/api/dead-letters/replay", replay, methods=["POST"]),
        Route("/api/dead-letters/purge", purge, methods=["POST"]),
        Route("/api/schedules", schedules, methods=["GET"]),
        Route("/api/schedules/{name}/{action}", schedule_action, methods=["POST"]),
        Route("/api/history", history, methods=["GET"]),
        Route("/api/history/{id}", history_entry, methods=["GET"]),
        Route("/api/events", event_stream, methods=["GET"]),
    ]
