"""Acting on tasks from the history: revoke everything a filter matches, send a task again.

A filter is the Tasks page's (`q`, `state`, `task`); only unfinished tasks are revoked (one
that succeeded, failed, was revoked or dead-lettered has nothing left to stop), at most
MAX_BULK at once. A retry sends the task again, under a new id, with the arguments the
dashboard sent it with (the only arguments it knows).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.routing import Route

from aiotask.dashboard.audit import audit
from aiotask.dashboard.core import Problem, dashboard_of, json_body, json_response, only_keys, want
from aiotask.dashboard.history import STATES
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from aiotask.dashboard.core import Dashboard

#: Tasks one bulk action touches at most.
MAX_BULK = 10_000
#: States with nothing left to revoke.
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
#: States a task may be sent again from.
RETRYABLE = frozenset({"FAILURE", "REVOKED", "REJECTED"})


def unfinished(dash: Dashboard, q: str, state: str, name: str) -> list[str]:
    """Ids of the unfinished tasks a filter matches, newest first (at most MAX_BULK)."""
    if state and state not in STATES:
        raise Problem(422, f"unknown state {state!r}; one of {', '.join(STATES)}")
    rows, _ = dash.history.search(q=q, state=state, name=name, limit=len(dash.history.rows))
    return [r.id for r in rows if r.state not in FINISHED][:MAX_BULK]


async def revoke_matching(
    dash: Dashboard, q: str, state: str, name: str, terminate: bool
) -> list[str]:
    ids = unfinished(dash, q, state, name)
    if ids:
        await dash.app.control.revoke(ids, terminate=terminate)
    return ids


async def send_again(dash: Dashboard, task_id: str) -> str:
    """Send a finished task again with its arguments; the new task's id."""
    row = dash.history.get(task_id)
    if row is None or row.args is None or row.kwargs is None:
        raise Problem(404, f"the arguments of {task_id!r} are not known (not sent here)")
    if row.state not in RETRYABLE:
        raise Problem(
            409, f"{task_id} is {row.state}: only a failed, revoked or dead task is retried"
        )
    try:
        result = await dash.app.send_task(row.name, row.args, row.kwargs)
    except ConfigurationError as exc:
        raise Problem(422, str(exc)) from None
    dash.history.sent(result.id, row.name, row.args, row.kwargs, time.time())
    return result.id


async def api_revoke_matching(request: Request) -> Response:
    body = await json_body(request)
    only_keys(body, {"q", "state", "task", "terminate"})
    q, state, name = (want(body, k, str, "") for k in ("q", "state", "task"))
    terminate = want(body, "terminate", bool, False)
    dash = dashboard_of(request)
    ids = await revoke_matching(dash, q, state, name, terminate)
    filters = f"q={q!r} state={state!r} task={name!r}"
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
