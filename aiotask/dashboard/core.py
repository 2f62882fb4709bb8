"""What every part of the dashboard shares: the app, the task history, JSON in and out.

`Problem` is the one way a handler says "your request is wrong" (4xx with a reason); the
app's exception handlers turn it, and aiotask's own errors, into a JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from aiotask.dashboard.history import DEFAULT_SIZE, STATES, History
from aiotask.history import HistoryQuery

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request

    from aiotask.app import App

#: Seconds `close()` waits for a follower that is still subscribing.
CLOSE_WAIT = 5.0
#: Largest request body accepted (bytes); a send's arguments beyond this are refused.
MAX_BODY = 1024 * 1024


class Problem(Exception):
    """A request the dashboard refuses: HTTP `status` and a reason for the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Dashboard:
    """One dashboard over one app: its history and the task that follows the events."""

    def __init__(self, app: App, *, history_size: int = DEFAULT_SIZE) -> None:
        self.app = app
        self.history = History(history_size)
        self._follower: asyncio.Task[None] | None = None

    def ensure_following(self) -> None:
        """Start following events on the serving loop (first request; mounts get no lifespan)."""
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(
                self.history.run(self.app), name="aiotask-dashboard-events"
            )

    async def close(self) -> None:
        """Stop following events (the app's connections are its owner's to close).

        A follower still subscribing is given up to CLOSE_WAIT seconds to finish first: a
        broker client cancelled halfway through connecting may leave its connection behind."""
        task, self._follower = self._follower, None
        if task is None:
            return
        if not task.done() and not self.history.following.is_set():
            subscribed = asyncio.ensure_future(self.history.following.wait())
            await asyncio.wait(
                {task, subscribed}, timeout=CLOSE_WAIT, return_when="FIRST_COMPLETED"
            )
            subscribed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await subscribed
        if not task.done():  # events already read are written before the writer stops
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.history.idle.wait(), CLOSE_WAIT)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def json_response(data: object, status: int = 200) -> Response:
    body = orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


async def read_body(request: Request) -> bytes:
    """The raw body, refusing one past MAX_BODY before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise Problem(413, f"request body too large (limit {MAX_BODY} bytes)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, f"request body too large (limit {MAX_BODY} bytes)")
    return body


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries; an empty body without a content type is `{}`."""
    body = await read_body(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # a form (which another site can make a browser post) is refused even when empty
    if (kind or body.strip()) and kind != "application/json":
        raise Problem(415, "send the body as JSON with Content-Type: application/json")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Problem(422, "the body must be a JSON object")
    return data


def only_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(
            422, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


def want(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """body[key] if it has type `kind` (a bool is no int here), `default` when absent."""
    if key not in body or body[key] is None:
        return default
    value = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise Problem(422, f"{key!r} must be {_names(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise Problem(422, f"{key!r} must be {_names(kinds)}, got {type(value).__name__}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    words = {
        list: "an array",
        dict: "an object",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def str_list(body: dict[str, Any], key: str) -> list[str] | None:
    value = want(body, key, list, None)
    if value is None:
        return None
    if not all(isinstance(v, str) and v for v in value):
        raise Problem(422, f"{key!r} must be an array of non-empty strings")
    return list(value)


def query_int(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(422, f"query parameter {key!r} must be an integer") from None
    if not low <= value <= high:
        raise Problem(422, f"query parameter {key!r} must be between {low} and {high}")
    return value


def _time(params: Mapping[str, Any], key: str) -> float | None:
    raw = str(params.get(key) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise Problem(422, f"{key!r} must be unix seconds (a number)") from None


def history_query(params: Mapping[str, Any], limit: int = 50, offset: int = 0) -> HistoryQuery:
    """The history filter of a query string or a JSON body: q, state, task, worker, since,
    until (unix seconds)."""
    state = str(params.get("state") or "")
    if state and state not in STATES:
        raise Problem(422, f"unknown state {state!r}; one of {', '.join(STATES)}")
    texts = {}
    for key in ("q", "task", "worker"):
        value = params.get(key) or ""
        if not isinstance(value, str):
            raise Problem(422, f"{key!r} must be a string")
        texts[key] = value
    return HistoryQuery(
        q=texts["q"],
        state=state,
        name=texts["task"],
        worker=texts["worker"],
        since=_time(params, "since"),
        until=_time(params, "until"),
        limit=limit,
        offset=offset,
    )
