"""The commands of `aiotask` (typer): worker, result, call, purge and the registered groups."""

from __future__ import annotations

import asyncio
import platform
import sys
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from aiotask import __version__
from aiotask._urls import redact
from aiotask.cli import _run_worker, _typer_fast
from aiotask.cli._beat import register as register_beat
from aiotask.cli._dashboard import register as register_dashboard
from aiotask.cli._db import register as register_db
from aiotask.cli._events import register as register_events
from aiotask.cli._exporter import register as register_exporter
from aiotask.cli._loader import load_app
from aiotask.cli._ops import register as register_ops
from aiotask.cli._queues import register as register_queues
from aiotask.exceptions import AiotaskError, ConfigurationError
from aiotask.result import verified
from aiotask.states import PENDING

if TYPE_CHECKING:
    from aiotask.cli._run_worker import WorkerOptions
    from aiotask.task import CallOptions

_typer_fast.install()  # plain option values without pydantic: a faster start of every command

cli = typer.Typer(
    name="aiotask",
    help="aiotask: asyncio-native distributed tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: wraps to the terminal (80 columns fit) and never truncates option names
    rich_markup_mode=None,
)

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aiotask {__version__} (Python {platform.python_version()})")
        raise typer.Exit(0)


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """aiotask: asyncio-native distributed tasks."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"Error: {redact(message)}", err=True)
    return typer.Exit(code)


@cli.command()
def worker(
    app: AppOpt,
    queues: Annotated[
        str,
        typer.Option("-Q", "--queues", help="comma-separated queues", show_default="default_queue"),
    ] = "",
    concurrency: Annotated[
        int | None,
        typer.Option(
            "-c",
            "--concurrency",
            min=1,
            help="coroutine tasks at once",
            show_default="concurrency setting, 100",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "-P",
            "--processes",
            min=0,
            help="children for plain-function tasks; 0: CPUs",
            show_default="processes setting, 0",
        ),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            "--prefetch",
            min=1,
            help="messages held unacknowledged",
            show_default="prefetch setting, or -c",
        ),
    ] = None,
    name: Annotated[
        str,
        typer.Option(
            "-n",
            "--hostname",
            "--name",
            help="worker name in logs and inspect",
            show_default="aiotask@HOST-PID",
        ),
    ] = "",
    loglevel: Annotated[
        str,
        typer.Option(
            "-l", "--loglevel", help="DEBUG, INFO, WARNING or ERROR", show_default="log_level"
        ),
    ] = "",
    max_tasks_per_child: Annotated[
        int | None,
        typer.Option(
            "--max-tasks-per-child",
            min=0,
            help="replace a child after N tasks",
            show_default="max_tasks_per_child setting; 0: never",
        ),
    ] = None,
    max_memory_per_child: Annotated[
        int | None,
        typer.Option(
            "--max-memory-per-child",
            min=0,
            help="replace a child past N KB RSS",
            show_default="max_memory_per_child setting; 0: never",
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", min=0, help="serve Prometheus /metrics on this port")
    ] = 0,
    log_format: Annotated[str, typer.Option("--log-format", help="text or json (lines)")] = "text",
    logfile: Annotated[str, typer.Option("--logfile", help="log to this file, not stderr")] = "",
    keep_logging: Annotated[
        bool, typer.Option("--keep-logging", help="keep the logging handlers the app set up")
    ] = False,
    embed_beat: Annotated[
        bool, typer.Option("--beat", help="also send periodic tasks (any number of workers may)")
    ] = False,
    events: Annotated[
        bool, typer.Option("-E", "--events", help="emit task and worker events (aiotask events)")
    ] = False,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="worker processes (event loops) under one supervising parent; auto: CPUs",
        ),
    ] = "1",
) -> None:
    """Consume queues and run tasks until SIGTERM (warm) or a second signal / SIGQUIT (cold)."""
    # here, not at the top: every other command (and this one before its re-exec) would load
    # the whole worker package for nothing; each `aiotask` process starts faster without it
    from aiotask.cli import _supervisor
    from aiotask.worker.supervisor import parse_workers

    try:
        n_workers = parse_workers(workers)
    except ValueError:
        raise _fail(f"--workers {workers!r}: expected a number of at least 1, or auto") from None
    options: WorkerOptions = {
        "app": app,
        "queues": queues,
        "concurrency": concurrency,
        "processes": processes,
        "prefetch": prefetch,
        "name": name,
        "loglevel": loglevel,
        "max_tasks_per_child": max_tasks_per_child,
        "max_memory_per_child": max_memory_per_child,
        "metrics_port": metrics_port,
        "log_format": log_format,
        "logfile": logfile,
        "keep_logging": keep_logging,
        "embed_beat": embed_beat,
        "events": events,
    }
    if n_workers > 1:  # the supervising parent; its children are plain `aiotask worker`s
        the_app, options["app"] = load_app(app)
        raise typer.Exit(_supervisor.supervise_workers(the_app, options, n_workers))
    if _run_worker.can_reexec():
        _run_worker.reexec(options)  # a worker without the CLI framework in memory
    raise typer.Exit(_run_worker.run(options))


@cli.command()
def result(
    app: AppOpt,
    task_id: Annotated[str, typer.Argument(help="the task id")],
) -> None:
    """Print a task's state and result (or error) as JSON."""
    the_app, _ = load_app(app)

    async def show() -> dict[str, Any]:
        async with the_app:
            record = await (await the_app.result_backend()).get(task_id)
            record = verified(record, task_id, the_app.result_keyring)
        if record is None:
            return {"id": task_id, "state": PENDING}
        out: dict[str, Any] = {"id": task_id, "state": record.state, "result": record.result}
        if record.exception is not None:
            out["error"] = {"type": record.exception.type, "message": record.exception.message}
        return out

    typer.echo(orjson.dumps(asyncio.run(show()), option=orjson.OPT_INDENT_2).decode())


@cli.command()
def call(
    app: AppOpt,
    task_name: Annotated[str, typer.Argument(help="registered task name, e.g. proj.add")],
    args: Annotated[str, typer.Option("--args", help="JSON list")] = "[]",
    kwargs: Annotated[str, typer.Option("--kwargs", help="JSON object")] = "{}",
    queue: Annotated[str, typer.Option("-Q", "--queue", help="queue (default: routed)")] = "",
    countdown: Annotated[
        float, typer.Option("--countdown", min=0, help="seconds before it may run")
    ] = 0.0,
) -> None:
    """Send a task by name and print its id."""
    the_app, _ = load_app(app)
    try:
        parsed_args, parsed_kwargs = orjson.loads(args), orjson.loads(kwargs)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"--args/--kwargs must be JSON: {exc}") from None
    if not isinstance(parsed_args, list) or not isinstance(parsed_kwargs, dict):
        raise ConfigurationError("--args must be a JSON list and --kwargs a JSON object")

    async def send() -> str:
        async with the_app:
            options: CallOptions = {"queue": queue or None}
            if countdown:
                options["countdown"] = countdown
            r = await the_app.send_task(task_name, parsed_args, parsed_kwargs, **options)
            return r.id

    typer.echo(asyncio.run(send()))


@cli.command()
def purge(
    app: AppOpt,
    queues: Annotated[
        str,
        typer.Option("-Q", "--queues", help="comma-separated queues", show_default="default_queue"),
    ] = "",
    force: Annotated[bool, typer.Option("-f", "--force", help="do not ask")] = False,
) -> None:
    """Delete every waiting message of the queues (default: the app's default queue)."""
    the_app, _ = load_app(app)
    names = [q.strip() for q in queues.split(",") if q.strip()] or [the_app.conf.default_queue]
    if not force and sys.stdin.isatty():
        typer.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)

    async def run() -> dict[str, int]:
        async with the_app:
            return {q: await the_app.broker.purge(q) for q in names}

    for queue, count in asyncio.run(run()).items():
        typer.echo(f"purged {count} messages from {queue}")


register_beat(cli)
register_ops(cli)
register_queues(cli)
register_db(cli)
register_events(cli)
register_dashboard(cli)
register_exporter(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: our errors become one line on stderr and exit code 2 (bad input) or 1."""
    try:
        code = cli(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None
    except typer.TyperException as exc:  # usage errors: one line, not a box
        message = exc.format_message() if hasattr(exc, "format_message") else ""
        if type(exc).__name__ == "NoArgsIsHelpError":  # `aiotask` alone: its help, exit 2
            typer.echo(message)
            raise SystemExit(2) from None
        if not message:  # e.g. `aiotask` alone: help was printed
            raise SystemExit(2) from None
        raise SystemExit(_fail(f"{message} (see aiotask --help)", 2).exit_code) from None
    except ConfigurationError as exc:
        raise SystemExit(_fail(str(exc), 2).exit_code) from None
    except AiotaskError as exc:
        raise SystemExit(_fail(f"{type(exc).__name__}: {exc}", 1).exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
