"""`aiotask beat` and `aiotask schedule list|add|change|pause|resume|remove|run-now`."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from aiotask import _log
from aiotask._time import now
from aiotask.cli._loader import group_app, load_app
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiotask.app import App
    from aiotask.beat.api import ScheduleInfo

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]
#: -A on a subcommand, or on the `schedule` group before it
SubAppOpt = Annotated[
    str, typer.Option("-A", "--app", help="module:attribute of your App (or give it before)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
NameArg = Annotated[str, typer.Argument(help="the entry's name")]

schedule_cli = typer.Typer(
    name="schedule", help="List and change periodic entries at run time.", no_args_is_help=True
)


@schedule_cli.callback()
def _group(ctx: typer.Context, app: SubAppOpt = "") -> None:
    ctx.obj = app


def beat(
    app: AppOpt,
    loglevel: Annotated[
        str,
        typer.Option(
            "-l", "--loglevel", help="DEBUG, INFO, WARNING or ERROR", show_default="log_level"
        ),
    ] = "",
    clock_offset: Annotated[
        float,
        typer.Option(
            "--clock-offset",
            hidden=True,
            help="(tests) run this beat's clock S seconds ahead (negative: behind)",
        ),
    ] = 0.0,
) -> None:
    """Send periodic tasks on time; run as many as you like, each slot is sent once."""
    the_app, _ = load_app(app)
    _log.configure((loglevel or the_app.conf.log_level).upper())
    clock = None
    if clock_offset:
        clock = functools.partial(_skewed, clock_offset)
    from aiotask.beat import service  # here: the other commands never load the beat runner

    raise typer.Exit(asyncio.run(service.serve(the_app, clock=clock)))


def _skewed(offset: float) -> float:
    """A host clock `offset` seconds off (the skew tests run beats on one machine)."""
    return now() + offset


def _run(the_app: App, work: Callable[[App], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with the_app:
            return await work(the_app)

    return asyncio.run(go())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _line(info: ScheduleInfo) -> str:
    state = "paused" if info.paused else "active"
    last = f"{_when(info.last_slot)} {info.last_state or ''}".strip()
    skipped = ", ".join(f"{r}: {n}" for r, n in sorted(info.skipped.items())) or "none"
    return (
        f"{info.name}  [{state}, {info.source}]  {info.task}  {info.schedule}\n"
        f"    next: {_when(info.next_run)}   last: {last}   skipped: {skipped}"
    )


@schedule_cli.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False, app: SubAppOpt = "") -> None:
    """Every entry with its schedule, next and last run, and skipped slots."""
    the_app, _ = group_app(ctx.obj, app)
    infos = _run(the_app, lambda a: a.schedules.list())
    if as_json:
        typer.echo(orjson.dumps([i.to_dict() for i in infos]).decode())
        return
    for info in infos:
        typer.echo(_line(info))
    if not infos:
        typer.echo("no periodic entries")


def _json(option: str, raw: str, kind: type) -> Any:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"{option} must be JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ConfigurationError(f"{option} must be a JSON {kind.__name__}")
    return value


@schedule_cli.command()
def add(
    ctx: typer.Context,
    name: NameArg,
    task: Annotated[str, typer.Option("--task", help="registered task name")],
    cron: Annotated[str, typer.Option("--cron", help="cron expression or @alias")] = "",
    every: Annotated[
        float, typer.Option("--every", help="seconds between runs (or --cron)", show_default=False)
    ] = 0.0,
    tz: Annotated[str, typer.Option("--tz", help="time zone of --cron")] = "",
    args: Annotated[str, typer.Option("--args", help="JSON list")] = "[]",
    kwargs: Annotated[str, typer.Option("--kwargs", help="JSON object")] = "{}",
    queue: Annotated[str, typer.Option("-Q", "--queue", help="queue (default: routed)")] = "",
    overlap: Annotated[str, typer.Option("--overlap", help="allow|skip|queue")] = "allow",
    catch_up: Annotated[str, typer.Option("--catch-up", help="none|latest|all")] = "latest",
    jitter: Annotated[
        float, typer.Option("--jitter", min=0, help="up to N s of delay per run, to spread load")
    ] = 0.0,
    expires: Annotated[
        float,
        typer.Option(
            "--expires",
            min=0,
            help="skip a run not sent within N s (default: never)",
            show_default=False,
        ),
    ] = 0.0,
    as_json: JsonOpt = False,
    app: SubAppOpt = "",
) -> None:
    """Add or replace a dynamic entry; every running beat picks it up at once."""
    the_app, _ = group_app(ctx.obj, app)
    spec: dict[str, Any] = {
        "args": _json("--args", args, list),
        "kwargs": _json("--kwargs", kwargs, dict),
        "overlap": overlap,
        "catch_up": catch_up,
        "jitter": jitter,
    }
    if cron:
        spec["cron"] = cron
    if every:
        spec["every"] = every
    if tz:
        spec["tz"] = tz
    if queue:
        spec["queue"] = queue
    if expires:
        spec["expires"] = expires
    info = _run(the_app, lambda a: a.schedules.add(name, task=task, **spec))
    typer.echo(orjson.dumps(info.to_dict()).decode() if as_json else _line(info))


@schedule_cli.command()
def pause(ctx: typer.Context, name: NameArg, app: SubAppOpt = "") -> None:
    """Stop sending an entry's slots (they are counted as skipped) until resumed."""
    the_app, _ = group_app(ctx.obj, app)
    _run(the_app, lambda a: a.schedules.pause(name))
    typer.echo(f"paused {name}")


@schedule_cli.command()
def resume(ctx: typer.Context, name: NameArg, app: SubAppOpt = "") -> None:
    """Send an entry's slots again, from the next one on."""
    the_app, _ = group_app(ctx.obj, app)
    _run(the_app, lambda a: a.schedules.resume(name))
    typer.echo(f"resumed {name}")


@schedule_cli.command()
def remove(ctx: typer.Context, name: NameArg, app: SubAppOpt = "") -> None:
    """Remove a dynamic entry."""
    the_app, _ = group_app(ctx.obj, app)
    if not _run(the_app, lambda a: a.schedules.remove(name)):
        raise ConfigurationError(f"no dynamic periodic entry named {name!r}")
    typer.echo(f"removed {name}")


@schedule_cli.command("run-now")
def run_now(ctx: typer.Context, name: NameArg, app: SubAppOpt = "") -> None:
    """Send an entry's task now, outside its schedule; prints the task id."""
    the_app, _ = group_app(ctx.obj, app)
    result = _run(the_app, lambda a: a.schedules.run_now(name))
    typer.echo(result.id)


def register(cli: typer.Typer) -> None:
    """Add the beat commands to the main `aiotask` command."""
    cli.command()(beat)
    cli.add_typer(schedule_cli)
