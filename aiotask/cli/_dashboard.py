"""`aiotask dashboard`: serve the web dashboard and HTTP API with uvicorn.

Binds 127.0.0.1 by default. With `--auth USER:PASSWORD` and/or a bearer token in
AIOTASK_DASHBOARD_TOKEN every request needs credentials; bound beyond loopback without
either, it refuses to start (exit 2): anyone who reaches the port could revoke tasks, replay
dead letters and shut workers down. Credentials are never printed or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aiotask import _log
from aiotask._extras import require
from aiotask.cli._loader import load_app
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]

log = logging.getLogger("aiotask.dashboard")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; anything else (0.0.0.0, a name) is reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard(
    app: AppOpt,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port to bind")] = 8555,
    auth: Annotated[
        str,
        typer.Option(
            "--auth",
            help="USER:PASSWORD for HTTP Basic (a bearer token: env AIOTASK_DASHBOARD_TOKEN)",
            show_default=False,
        ),
    ] = "",
    read_only_auth: Annotated[
        str,
        typer.Option(
            "--read-only-auth",
            help="USER:PASSWORD that may look but not act (403 for any change)",
            show_default=False,
        ),
    ] = "",
    history: Annotated[
        int,
        typer.Option(
            "--history", min=1, help="recent tasks kept in memory (the history itself is stored)"
        ),
    ] = 10_000,
    loglevel: Annotated[
        str, typer.Option("-l", "--loglevel", help="DEBUG, INFO, WARNING or ERROR")
    ] = "",
) -> None:
    """Serve the web dashboard and the HTTP API (JSON; OpenAPI at /api/openapi.json)."""
    the_app, _ = load_app(app)
    module = require("aiotask.dashboard", what="aiotask dashboard")
    uvicorn = require("uvicorn", what="aiotask dashboard")
    credentials = module.Auth.build(auth or None, viewer=read_only_auth or None)
    if not credentials.enabled and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without auth: anyone reaching it could "
            "revoke tasks and stop workers; pass --auth USER:PASSWORD or set "
            f"{module.TOKEN_ENV}, or bind 127.0.0.1"
        )
    _log.configure((loglevel or the_app.conf.log_level).upper())
    web = module.create_app(the_app, auth=credentials, history_size=history)
    config = uvicorn.Config(
        web,
        host=host,
        port=port,
        log_config=None,  # ours (configured above), which redacts
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = _quiet_exit(uvicorn.Server)(config)

    async def serve() -> None:
        async with the_app:
            log.info(
                "dashboard of %s on http://%s:%d/ (auth: %s)",
                the_app.main,
                host,
                port,
                "on" if credentials.enabled else "off",
            )
            await server.serve()

    asyncio.run(serve())


def _quiet_exit(base: Any) -> Any:
    """uvicorn's Server, but a SIGTERM/SIGINT shutdown exits 0 like `aiotask worker` (uvicorn
    raises the signal again after its graceful stop, so the process would die of it)."""

    class Server(base):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def register(cli: typer.Typer) -> None:
    cli.command()(dashboard)
