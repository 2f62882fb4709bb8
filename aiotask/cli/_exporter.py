"""`aiotask exporter`: the cluster-level Prometheus exporter as a process.

One process for the whole cluster: it follows the events of every worker and producer
(workers need -E) and counts the queues every `--interval` seconds, and serves both on
/metrics (names in docs/monitoring.md). Needs the `aiotask[metrics]` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from aiotask._urls import redact
from aiotask.cli._loader import load_app
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aiotask.app import App

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]
DEFAULT_PORT = 9200


def exporter(
    app: AppOpt,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="serve on this port")] = (
        DEFAULT_PORT
    ),
    addr: Annotated[str, typer.Option("--addr", help="address to listen on")] = "0.0.0.0",  # noqa: S104 - scraped from elsewhere
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="seconds between two queue counts")
    ] = 15.0,
    queues: Annotated[
        str,
        typer.Option("-Q", "--queues", help="comma-separated queues to count besides known ones"),
    ] = "",
) -> None:
    """Serve cluster metrics (task events of every worker, queue depths) on /metrics."""
    the_app, _ = load_app(app)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    asyncio.run(_serve(the_app, port, addr, interval, names))


async def _serve(app: App, port: int, addr: str, interval: float, queues: list[str]) -> None:
    from aiotask.events import follow
    from aiotask.metrics import serve  # the optional extra: a clear error when missing
    from aiotask.metrics.cluster import ClusterMetrics, feed

    metrics = ClusterMetrics()
    try:
        server, _ = serve(metrics, port, addr)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {addr}:{port}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with app, follow(app) as events:
            typer.echo(
                f"serving the cluster metrics of {app.main} ({redact(app.conf.broker_url)}) on "
                f"http://{addr}:{server.server_port}/metrics (Ctrl-C to stop)",
                err=True,
            )
            running = asyncio.create_task(
                feed(metrics, events, lambda: app.dead_letters.queue_stats(queues), interval)
            )
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in (running, stopping):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # re-raises what stopped the feed (e.g. the broker went away)
            stopping.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.shutdown()
        server.server_close()


def register(cli: typer.Typer) -> None:
    """Add `aiotask exporter` to the main `aiotask` command."""
    cli.command()(exporter)
