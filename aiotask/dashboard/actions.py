"""The pages' state-changing forms: revoke, retry, bulk revoke / retry / delete, rate limit,
shutdown, dead letters, schedules.

Each is a POST of a url-encoded form carrying the CSRF token (double submit; see auth.py),
confirmed in the browser first. It does one thing through the operations layer and
redirects (303) back to the page named by `next` with a message; a failure is the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

from starlette.responses import RedirectResponse
from starlette.routing import Route

from aiotask.dashboard.audit import audit
from aiotask.dashboard.auth import CSRF_COOKIE, CSRF_FIELD, csrf_ok
from aiotask.dashboard.bulk import delete_matching, retry_matching, revoke_matching, send_again
from aiotask.dashboard.core import Problem, dashboard_of, read_body
from aiotask.dashboard.filters import filter_query
from aiotask.exceptions import AiotaskError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request
    from starlette.responses import Response

    from aiotask.dashboard.core import Dashboard

Form = dict[str, str]


async def _form(request: Request) -> Form:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Problem(415, "actions take a url-encoded form")
    try:
        text = (await read_body(request)).decode()
    except UnicodeDecodeError:
        raise Problem(400, "the form is not UTF-8") from None
    parsed = parse_qs(text, keep_blank_values=True, max_num_fields=50)
    form = {k: v[0] for k, v in parsed.items()}
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
        raise Problem(403, "the form's CSRF token is missing or stale: reload the page")
    return form


def _next(form: Form) -> str:
    """Where to go back: a path inside the dashboard, never another site."""
    target = form.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _need(form: Form, key: str) -> str:
    value = form.get(key, "").strip()
    if not value:
        raise Problem(422, f"the form needs {key!r}")
    return value


async def _revoke(dash: Dashboard, form: Form) -> str:
    task_id = _need(form, "id")
    terminate = form.get("terminate") == "1"
    await dash.app.control.revoke([task_id], terminate=terminate)
    return f"{'terminated' if terminate else 'revoked'} {task_id}"


async def _rate_limit(dash: Dashboard, form: Form) -> str:
    task, rate = _need(form, "task"), _need(form, "rate")
    replies = await dash.app.control.rate_limit(task, rate)
    failed = sorted(n for n, r in replies.items() if "error" in r)
    done = f"rate limit of {task} set to {rate} on {len(replies) - len(failed)} worker(s)"
    return done + (f"; refused by {', '.join(failed)}" if failed else "")


async def _shutdown(dash: Dashboard, form: Form) -> str:
    worker = _need(form, "worker")
    replies = await dash.app.control.shutdown(destination=[worker])
    return f"shutdown sent to {worker}" + ("" if replies else " (no reply yet)")


async def _dead_letters(dash: Dashboard, form: Form) -> str:
    op = form.get("op")
    if op not in ("replay", "purge"):
        raise Problem(422, "op must be replay or purge")
    every = form.get("all") == "1"
    ids = None if every else [_need(form, "id")]
    queue = form.get("queue") or None
    dl = dash.app.dead_letters
    report = await (dl.replay(ids, queue=queue) if op == "replay" else dl.purge(ids, queue=queue))
    verb = "replayed" if op == "replay" else "purged"
    missing = f"; not found: {', '.join(report.missing)}" if report.missing else ""
    return f"{verb} {len(report.ids)} dead letter(s){missing}"


async def _schedules(dash: Dashboard, form: Form) -> str:
    name, op = _need(form, "name"), form.get("op")
    api = dash.app.schedules
    if op == "pause":
        await api.pause(name)
    elif op == "resume":
        await api.resume(name)
    elif op == "run-now":
        result = await api.run_now(name)
        return f"sent {name} now as {result.id}"
    else:
        raise Problem(422, "op must be pause, resume or run-now")
    return f"{op}d {name}"


def _action(
    work: Callable[[Dashboard, Form], Awaitable[str]],
) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        form = await _form(request)
        dash = dashboard_of(request)
        try:
            message = await work(dash, form)
        except (AiotaskError, Problem) as exc:
            message = f"failed: {exc}"
        action = request.url.path.rsplit("/actions/", 1)[-1]
        target = form.get("id") or form.get("worker") or form.get("task") or form.get("name") or "-"
        audit(request, f"{action} {form.get('op', '')}".strip(), target, message)
        base = request.scope.get("root_path", "")
        target = _next(form)
        sep = "&" if "?" in target else "?"
        return RedirectResponse(base + target + sep + urlencode({"msg": message}), 303)

    return handler


async def _revoke_matching(dash: Dashboard, form: Form) -> str:
    terminate = form.get("terminate") == "1"
    ids = await revoke_matching(dash, filter_query(form), terminate)
    return f"{'terminated' if terminate else 'revoked'} {len(ids)} unfinished task(s)"


async def _retry_matching(dash: Dashboard, form: Form) -> str:
    sent = await retry_matching(dash, filter_query(form))
    return f"sent {len(sent)} failed task(s) again"


async def _delete_matching(dash: Dashboard, form: Form) -> str:
    ids = await delete_matching(dash, filter_query(form))
    return f"deleted {len(ids)} task(s)"


async def _retry(dash: Dashboard, form: Form) -> str:
    task_id = _need(form, "id")
    return f"sent {task_id} again as {await send_again(dash, task_id)}"


def action_routes() -> list[Route]:
    return [
        Route("/actions/revoke-matching", _action(_revoke_matching), methods=["POST"]),
        Route("/actions/retry-matching", _action(_retry_matching), methods=["POST"]),
        Route("/actions/delete-matching", _action(_delete_matching), methods=["POST"]),
        Route("/actions/retry", _action(_retry), methods=["POST"]),
        Route("/actions/revoke", _action(_revoke), methods=["POST"]),
        Route("/actions/rate-limit", _action(_rate_limit), methods=["POST"]),
        Route("/actions/shutdown", _action(_shutdown), methods=["POST"]),
        Route("/actions/dead-letters", _action(_dead_letters), methods=["POST"]),
        Route("/actions/schedules", _action(_schedules), methods=["POST"]),
    ]
