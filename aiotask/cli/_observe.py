"""The worker command's logging and metrics options (kept out of the command itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask import _log
from aiotask.context import current_task
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiotask.app import App
    from aiotask.worker._probe import Probe

LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


def _running() -> tuple[str, str] | None:
    ctx = current_task.get()
    return (ctx.name, ctx.id) if ctx is not None else None


def setup_logging(app: App, loglevel: str, fmt: str, logfile: str, keep: bool) -> None:
    """`-l` sets the level (default: the app's `log_level`, or, with `--keep-logging`, the
    level the user's own configuration set); `--log-format`, `--logfile`, `--keep-logging`."""
    if fmt not in ("text", "json"):
        raise ConfigurationError(f"bad --log-format {fmt!r}: use text or json")
    level: str | None = (loglevel or ("" if keep else app.conf.log_level)).upper() or None
    if level is not None and level not in LEVELS:
        raise ConfigurationError(f"bad -l {loglevel!r}: use DEBUG, INFO, WARNING or ERROR")
    try:
        _log.configure(
            level,
            fmt="json" if fmt == "json" else "text",
            logfile=logfile or None,
            keep=keep,
            current=_running,
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot open --logfile {logfile!r}: {exc}") from None


def setup_metrics(port: int) -> tuple[Probe | None, Callable[[], None]]:
    """`--metrics-port`: a probe for the Worker, and what stops the HTTP server."""
    if not port:
        return None, lambda: None
    # the optional extra. SendTime is not added here: its header costs every message ~2 us
    # to decode (4% of a no-op drain); an app that wants exact queue waits adds it itself.
    from aiotask.metrics import WorkerMetrics, serve

    metrics = WorkerMetrics()
    try:
        server, _ = serve(metrics, port)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on port {port}: {exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        metrics.close()

    return metrics, stop
