"""`create_app(app)`: the dashboard as one ASGI application (Starlette), to serve or mount.

    from aiotask.dashboard import create_app
    fastapi_app.mount("/aiotask", create_app(app, auth="admin:secret"))

Mounted apps get no lifespan events from their parent, so the event follower starts on the
first request; `await dashboard.state.dashboard.close()` stops it (the CLI's server does it
at shutdown). The app's broker and backend connections stay the caller's to close.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from aiotask._log import get_logger
from aiotask.dashboard.api import api_routes
from aiotask.dashboard.auth import UNSAFE, Auth, AuthMiddleware, _header, same_origin
from aiotask.dashboard.bulk import bulk_routes
from aiotask.dashboard.core import Dashboard, Problem, json_response
from aiotask.dashboard.history import DEFAULT_SIZE
from aiotask.dashboard.pages import page_routes, static_routes
from aiotask.exceptions import (
    AiotaskError,
    BrokerConnectionError,
    ConfigurationError,
    NotRegistered,
    SerializationError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    from aiotask.app import App

log = get_logger(__name__)


class GuardMiddleware:
    """Starts the event follower on the serving loop; refuses cross-origin state changes."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.dashboard.ensure_following()
            if scope["method"] in UNSAFE and not same_origin(
                _header(scope, b"origin"), _header(scope, b"host")
            ):
                response = json_response({"error": "cross-origin request refused"}, 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _problem(request: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, Problem) else 400
    return json_response({"error": str(exc)}, status)


async def _http(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return json_response({"error": getattr(exc, "detail", str(exc))}, status)


async def _aiotask(request: Request, exc: Exception) -> Response:
    """aiotask's own errors: the caller's fault (4xx) or a server that is down (503)."""
    if isinstance(exc, NotRegistered):
        status = 404
    elif isinstance(exc, ConfigurationError | SerializationError):
        status = 422
    elif isinstance(exc, BrokerConnectionError):
        status = 503
    else:
        log.exception("dashboard: %s %s failed", request.method, request.url.path)
        status = 500
    return json_response({"error": str(exc)}, status)


def create_app(
    app: App,
    *,
    auth: Auth | str | None = None,
    history_size: int = DEFAULT_SIZE,
) -> Starlette:
    """The dashboard and HTTP API over `app`. `auth`: an `Auth`, or "USER:PASSWORD"; a bearer
    token is also taken from AIOTASK_DASHBOARD_TOKEN unless `auth` is an `Auth`."""
    credentials = auth if isinstance(auth, Auth) else Auth.build(auth)
    dashboard = Dashboard(app, history_size=history_size)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dashboard.close()

    web = Starlette(
        routes=[*bulk_routes(), *api_routes(), *page_routes(), *static_routes()],
        lifespan=lifespan,
        middleware=[
            Middleware(AuthMiddleware, auth=credentials),
            Middleware(GuardMiddleware, dashboard=dashboard),
        ],
        exception_handlers={
            Problem: _problem,
            HTTPException: _http,
            AiotaskError: _aiotask,
        },
    )
    web.state.dashboard = dashboard
    web.state.auth = credentials
    return web
