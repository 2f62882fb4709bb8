"""Acting on tasks from the history: revoke everything a filter matches, send a task again.

A filter is the Tasks page's (`q`, `state`, `task`, `worker`, `since`, `until`), run over the
stored history (not only what this process saw); only unfinished tasks are revoked (one
that succeeded, failed, was revoked or dead-lettered has nothing left to stop), at most
MAX_BULK at once. A retry sends the task again, under a new id, with the arguments the
dashboard sent it with (the only arguments it knows).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import orjson
from starlette.routing import Route

from aiotask.dashboard.audit import audit
from aiotask.dashboard.core import (
    Problem,
    dashboard_of,
    history_query,
    json_body,
    json_response,
    only_keys,
    want,
)
from aiotask.dashboard.history import STATES
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from aiotask.dashboard.core import Dashboard
    from aiotask.history import HistoryQuery

#: Tasks one bulk action touches at most.
MAX_BULK = 10_000
#: History rows read per store call while collecting them.
BULK_PAGE = 1_000
#: States with nothing left to revoke.
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
#: States a task may be sent again from.
RETRYABLE = frozenset({"FAILURE", "REVOKED", "REJECTED"})


async def unfinished(dash: Dashboard, query: HistoryQuery) -> list[str]:
    """Ids of the unfinished tasks a filter matches in the stored history, newest first (at
    most MAX_BULK), read a page at a time."""
    ids: list[str] = []
    offset = 0
    while len(ids) < MAX_BULK:
        rows, total = await dash.history.search(dash.app, query.page(BULK_PAGE, offset))
        ids += [r.id for r in rows if r.state not in FINISHED]
        offset += BULK_PAGE
        if not rows or offset >= total:
            break
    return ids[:MAX_BULK]


async def count_unfinished(dash: Dashboard, query: HistoryQuery) -> int:
    """How many unfinished tasks a filter matches (the Tasks page's button): counts per
    unfinished state, never reading the rows themselves."""
    if query.state in FINISHED:
        return 0
    states = [query.state] if query.state else [s for s in STATES if s not in FINISHED]
    total = 0
    for state in states:
        _, found = await dash.history.search(dash.app, replace(query, state=state, limit=0))
        total += found
    return min(total, MAX_BULK)


async def revoke_matching(dash: Dashboard, query: HistoryQuery, terminate: bool) -> list[str]:
    ids = await unfinished(dash, query)
    if ids:
        await dash.app.control.revoke(ids, terminate=terminate)
    return ids


async def send_again(dash: Dashboard, task_id: str) -> str:
    """Send a finished task again with its arguments; the new task's id."""
    row = await dash.history.get(dash.app, task_id)
    if row is None or not row.exact_args or row.args is None or row.kwargs is None:
        raise Problem(404, f"the arguments of {task_id!r} are not known (not sent here)")
    if row.state not in RETRYABLE:
        raise Problem(
            409, f"{task_id} is {row.state}: only a failed, revoked or dead task is retried"
        )
    args, kwargs = orjson.loads(row.args), orjson.loads(row.kwargs)
    try:
        result = await dash.app.send_task(row.name, args, kwargs)
    except ConfigurationError as exc:
        raise Problem(422, str(exc)) from None
    await dash.history.sent(dash.app, result.id, row.name, args, kwargs)
    return result.id


async def api_revoke_matching(request: Request) -> Response:
    body = await json_body(request)
    only_keys(body, {"q", "state", "task", "worker", "since", "until", "terminate"})
    query = history_query(body)
    terminate = want(body, "terminate", bool, False)
    ids = await revoke_matching(dashboard_of(request), query, terminate)
    filters = (
        f"q={query.q!r} state={query.state!r} task={query.name!r} worker={query.worker!r} "
        f"since={query.since!r} until={query.until!r}"
    )
    audit(request, "revoke-matching", filters, f"{len(ids)} revoked")
    return json_response({"revoked": ids})


async def api_retry(request: Request) -> Response:
    task_id = request.path_params["id"]
    new = await send_again(dashboard_of(request), task_id)
    audit(request, "retry", task_id, f"sent again as {new}")
    return json_response({"id": new, "retry_of": task_id}, 202)


def bulk_routes() -> list[Route]:
    return [
        Route("/api/history/revoke", api_revoke_matching, methods=["POST"]),
        Route("/api/history/{id}/retry", api_retry, methods=["POST"]),
    ]
