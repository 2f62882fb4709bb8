"""Acting on tasks from the history: revoke, retry or delete everything a filter matches,
send a task again.

A filter is the Tasks page's (`q`, `state`, `task`, `worker`, `since`, `until`), run over the
stored history (not only what this process saw), at most MAX_BULK tasks at once. Only
unfinished tasks are revoked (one that succeeded, failed, was revoked or dead-lettered has
nothing left to stop). A retry sends the task again, under a new id, with the arguments the
dashboard sent it with (the only arguments it knows): a bulk retry sends every failed,
revoked or dead task of the filter whose arguments are known, and skips the others. A bulk
delete forgets the results and drops the history rows of every task the filter matches (it
needs a filter: an empty one would be the whole history).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

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
    from collections.abc import Callable

    from starlette.requests import Request
    from starlette.responses import Response

    from aiotask.dashboard.core import Dashboard
    from aiotask.history import HistoryQuery, HistoryRecord

#: Tasks one bulk action touches at most.
MAX_BULK = 10_000
#: History rows read per store call while collecting them.
BULK_PAGE = 1_000
#: States with nothing left to revoke.
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
#: States a task may be sent again from.
RETRYABLE = frozenset({"FAILURE", "REVOKED", "REJECTED"})


async def matching(
    dash: Dashboard, query: HistoryQuery, keep: Callable[[HistoryRecord], bool]
) -> list[HistoryRecord]:
    """The records a filter matches in the stored history that `keep` accepts, newest first
    (at most MAX_BULK), read a page at a time."""
    found: list[HistoryRecord] = []
    offset = 0
    while len(found) < MAX_BULK:
        rows, total = await dash.history.search(dash.app, query.page(BULK_PAGE, offset))
        found += [r for r in rows if keep(r)]
        offset += BULK_PAGE
        if not rows or offset >= total:
            break
    return found[:MAX_BULK]


async def unfinished(dash: Dashboard, query: HistoryQuery) -> list[str]:
    """Ids of the unfinished tasks a filter matches, newest first (at most MAX_BULK)."""
    return [r.id for r in await matching(dash, query, lambda r: r.state not in FINISHED)]


def _retryable(r: HistoryRecord) -> bool:
    return r.state in RETRYABLE and r.exact_args and r.args is not None and r.kwargs is not None


async def retry_matching(dash: Dashboard, query: HistoryQuery) -> dict[str, str]:
    """Send again every failed, revoked or dead task of the filter whose arguments are known:
    {old id: new id}. A task whose name this app does not know is skipped."""
    sent: dict[str, str] = {}
    for row in await matching(dash, query, _retryable):
        try:
            sent[row.id] = await send_again(dash, row.id)
        except Problem:  # gone or changed since it was read, or an unknown task: skipped
            continue
    return sent


async def delete_matching(dash: Dashboard, query: HistoryQuery) -> list[str]:
    """Forget the results and drop the history rows of every task the filter matches."""
    if not query.filtered:
        raise Problem(422, "a bulk delete needs a filter (q, state, task, worker, since, until)")
    ids = [r.id for r in await matching(dash, query, lambda r: True)]
    if not ids:
        return []
    try:
        backend = await dash.app.result_backend()
    except ConfigurationError:
        backend = None  # no results to forget
    if backend is not None:
        await backend.forget(ids)
    await dash.history.delete(dash.app, ids)
    return ids


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


async def _stored_state(dash: Dashboard, task_id: str) -> str | None:
    """The result backend's state of a task: its outcome is stored before the worker's events
    reach the history (the task's page shows that one, so a retry must accept it too)."""
    try:
        record = await (await dash.app.result_backend()).get(task_id)
    except ConfigurationError:
        return None
    return None if record is None else record.state


async def send_again(dash: Dashboard, task_id: str) -> str:
    """Send a finished task again with its arguments; the new task's id."""
    row = await dash.history.get(dash.app, task_id)
    if row is None or not row.exact_args or row.args is None or row.kwargs is None:
        raise Problem(404, f"the arguments of {task_id!r} are not known (not sent here)")
    if row.state not in RETRYABLE and await _stored_state(dash, task_id) not in RETRYABLE:
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


FILTER_KEYS = frozenset({"q", "state", "task", "worker", "since", "until"})


def filters_text(query: HistoryQuery) -> str:
    """A filter as the audit log shows it."""
    return (
        f"q={query.q!r} state={query.state!r} task={query.name!r} worker={query.worker!r} "
        f"since={query.since!r} until={query.until!r}"
    )


async def _filter_body(request: Request, *extra: str) -> tuple[dict[str, Any], HistoryQuery]:
    """A bulk action's body (the history filter, plus `extra` keys) and its query."""
    body = await json_body(request)
    only_keys(body, {*FILTER_KEYS, *extra})
    return body, history_query(body)


async def api_revoke_matching(request: Request) -> Response:
    body, query = await _filter_body(request, "terminate")
    terminate = want(body, "terminate", bool, False)
    ids = await revoke_matching(dashboard_of(request), query, terminate)
    audit(request, "revoke-matching", filters_text(query), f"{len(ids)} revoked")
    return json_response({"revoked": ids})


async def api_retry_matching(request: Request) -> Response:
    _, query = await _filter_body(request)
    sent = await retry_matching(dashboard_of(request), query)
    audit(request, "retry-matching", filters_text(query), f"{len(sent)} sent again")
    return json_response({"retried": sent}, 202)


async def api_delete_matching(request: Request) -> Response:
    _, query = await _filter_body(request)
    ids = await delete_matching(dashboard_of(request), query)
    audit(request, "delete-matching", filters_text(query), f"{len(ids)} deleted")
    return json_response({"deleted": ids})


async def api_retry(request: Request) -> Response:
    task_id = request.path_params["id"]
    new = await send_again(dashboard_of(request), task_id)
    audit(request, "retry", task_id, f"sent again as {new}")
    return json_response({"id": new, "retry_of": task_id}, 202)


def bulk_routes() -> list[Route]:
    return [
        Route("/api/history/revoke", api_revoke_matching, methods=["POST"]),
        Route("/api/history/retry", api_retry_matching, methods=["POST"]),
        Route("/api/history/delete", api_delete_matching, methods=["POST"]),
        Route("/api/history/{id}/retry", api_retry, methods=["POST"]),
    ]
