"""Server-rendered pages: Overview, Tasks, a task, Dead letters, Schedules.

Jinja2 with autoescaping on for every template (task arguments and errors are user data).
Each page is `base.html` around a fragment; `/partials/...` renders the fragment alone, which
the page's script fetches again when the SSE stream reports a change (so all HTML, live
updates included, is escaped on the server).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2
import orjson
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from aiotask._time import now
from aiotask.dashboard.actions import action_routes
from aiotask.dashboard.api import HIDDEN_TASKS, result_view
from aiotask.dashboard.auth import ADMIN, CSRF_COOKIE, identity_of, new_csrf_token
from aiotask.dashboard.bulk import MAX_BULK, RETRYABLE, count_unfinished
from aiotask.dashboard.core import Problem, dashboard_of, query_int
from aiotask.dashboard.filters import WITHIN, filter_query, filter_values, link_query
from aiotask.dashboard.graphs import NODE_H, NODE_W, chart, layout
from aiotask.dashboard.history import STATES
from aiotask.exceptions import ConfigurationError, ResultSignatureError
from aiotask.result import verified

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

NAV = (
    ("/", "Overview"),
    ("/tasks", "Tasks"),
    ("/dead-letters", "Dead letters"),
    ("/schedules", "Schedules"),
)
PAGE_SIZE = 50
#: Minutes the overview's chart covers, one bar each.
CHART_MINUTES = 60
#: Tasks one workflow page draws at most.
MAX_CANVAS = 500


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ts: float | None) -> str:
    return "-" if ts is None else f"{max(time.time() - ts, 0):.0f}s ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _pretty(value: object, indent: bool = True) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, default=repr, option=option | orjson.OPT_NON_STR_KEYS).decode()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aiotask.dashboard", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, ago=_ago, seconds=_seconds, pretty=_pretty)
    return env


ENV = _environment()


async def overview(request: Request) -> dict[str, Any]:
    app = dashboard_of(request).app
    at = now()
    try:
        workers = [w.to_dict(at) for w in await app.control.workers()]
        note = ""
    except ConfigurationError as exc:  # no result backend: no registry to read
        workers, note = [], str(exc)
    stats = await app.dead_letters.queue_stats()
    dash = dashboard_of(request)
    store = await dash.history.store(app)
    counts = await store.counts()
    since = (int(time.time()) // 60 - CHART_MINUTES + 1) * 60.0
    return {
        "workers": workers,
        "note": note,
        "online": sum(w["state"] == "online" for w in workers),
        "lost": sum(w["state"] == "lost" for w in workers),
        "queues": stats,
        "counts": [(s, counts.get(s, 0)) for s in STATES if counts.get(s)],
        "chart": chart(await store.finished(since, 60.0)),
        "store_note": dash.history.store_note,
        "task_names": sorted(n for n in app.tasks if n not in HIDDEN_TASKS),
    }


async def tasks(request: Request) -> dict[str, Any]:
    dash = dashboard_of(request)
    params = request.query_params
    offset = query_int(request, "offset", 0, 0, 10_000_000)
    query = filter_query(params, PAGE_SIZE, offset)
    rows, total = await dash.history.search(dash.app, query)
    values = filter_values(params)

    def page_query(at: int) -> str:
        return link_query(values, at)

    return {
        "rows": rows,
        "total": total,
        "unfinished": await count_unfinished(dash, query) if query.filtered else 0,
        "matching": min(total, MAX_BULK) if query.filtered else 0,
        **values,
        "states": STATES,
        "windows": list(WITHIN),
        "offset": offset,
        "limit": PAGE_SIZE,
        "page_query": page_query,
    }


async def task(request: Request) -> dict[str, Any]:
    dash = dashboard_of(request)
    task_id = request.path_params["id"]
    row = await dash.history.get(dash.app, task_id)
    try:
        backend = await dash.app.result_backend()
    except ConfigurationError:  # no result backend: what the events said is all there is
        view = result_view(task_id, None)
    else:
        try:
            record = verified(await backend.get(task_id), task_id, dash.app.result_keyring)
            view = result_view(task_id, record)
        except ResultSignatureError as exc:  # result_signing: show why, never the value
            message = {"type": type(exc).__name__, "message": str(exc), "traceback": ""}
            view = {"id": task_id, "state": "UNVERIFIED", "error": message}
    state = view["state"]
    if row is not None and state == "PENDING":
        state = row.state  # events know RECEIVED/STARTED/REJECTED before any result exists
    workflow = row and (row.root_id or row.group_id)
    if row is not None and not workflow:  # a root: a workflow when some task descends from it
        family = await (await dash.history.store(dash.app)).family(row.id, 2)
        workflow = row.id if len(family) > 1 else None
    return {
        "task_id": task_id,
        "row": row,
        "name": (row.name if row else None) or view.get("task"),
        "state": state,
        "args": row.args if row else None,
        "kwargs": row.kwargs if row else None,
        "error": view.get("error"),
        "has_result": "result" in view and view["state"] != "PENDING",
        "retryable": state in RETRYABLE and row is not None and row.exact_args,
        "result": view.get("result"),
        "workflow": workflow or None,
    }


async def canvas(request: Request) -> dict[str, Any]:
    """A workflow drawn as a graph: the tasks of a root (or group) id with their states."""
    dash = dashboard_of(request)
    root = request.path_params["id"]
    store = await dash.history.store(dash.app)
    records = await store.family(root, MAX_CANVAS)
    return {"root": root, "graph": layout(records), "records": records, "max": MAX_CANVAS}


async def dead_letters(request: Request) -> dict[str, Any]:
    queue = request.query_params.get("queue", "")
    found = await dashboard_of(request).app.dead_letters.list(queue=queue or None, limit=500)
    return {"entries": [d.to_dict(full=True) for d in found], "queue": queue}


async def schedules(request: Request) -> dict[str, Any]:
    return {"entries": await dashboard_of(request).app.schedules.list()}


def _partial_url(request: Request, base: str) -> str:
    path = request.url.path.removeprefix(base)
    url = base + "/partials" + ("" if path == "/" else path)
    return url + (f"?{request.url.query}" if request.url.query else "")


def _render(
    request: Request, title: str, partial: str, data: dict[str, Any], *, full: bool, watch: str
) -> Response:
    base = request.scope.get("root_path", "")
    token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    dash = dashboard_of(request)
    context = {
        **data,
        "base": base,
        "csrf": token,
        "title": title,
        "nav": NAV,
        "app_name": dash.app.main,
        "problem": dash.history.problem,
        "node_w": NODE_W,
        "node_h": NODE_H,
        "msg": request.query_params.get("msg", ""),
        "user": identity_of(request.scope)[0],
        "admin": identity_of(request.scope)[1] == ADMIN,
        "partial": partial,
        "partial_url": _partial_url(request, base),
        "watch": watch,
    }
    template = ENV.get_template("base.html" if full else partial)
    response = HTMLResponse(template.render(context))
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(CSRF_COOKIE, token, path=base or "/", httponly=True, samesite="strict")
    return response


def _page(
    title: str, partial: str, load: Any, *, full: bool, live: str = "*"
) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        data = await load(request)
        watch = request.path_params.get("id", "") if live == "id" else live
        return _render(request, title, partial, data, full=full, watch=watch)

    return handler


PAGES = (
    ("/", "Overview", "_overview.html", overview, "*"),
    ("/tasks", "Tasks", "_tasks.html", tasks, "*"),
    ("/tasks/{id}", "Task", "_task.html", task, "id"),
    ("/canvas/{id}", "Workflow", "_canvas.html", canvas, "id"),
    ("/dead-letters", "Dead letters", "_dead_letters.html", dead_letters, "*"),
    ("/schedules", "Schedules", "_schedules.html", schedules, ""),
)


def page_routes() -> list[Route]:
    routes = []
    for path, title, partial, load, live in PAGES:
        routes.append(
            Route(path, _page(title, partial, load, full=True, live=live), methods=["GET"])
        )
        routes.append(
            Route(
                "/partials" + (path if path != "/" else ""),
                _page(title, partial, load, full=False, live=live),
                methods=["GET"],
            )
        )
    return [*routes, *action_routes()]


_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC:
        raise Problem(404, "no such file")
    data = resources.files("aiotask.dashboard").joinpath("static", name).read_bytes()
    return Response(data, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})


def static_routes() -> list[Route]:
    return [Route("/static/{name}", static, methods=["GET"])]
