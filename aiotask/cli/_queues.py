"""`aiotask queues` and `aiotask dlq list|show|replay|purge` (see docs/cli.md, docs/monitoring.md).

Thin wrappers over `app.dead_letters`; `-A` may come before the subcommand
(`aiotask dlq -A proj:app list`) or after it.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from aiotask._urls import redact
from aiotask.cli._loader import group_app, load_app
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiotask.app import App
    from aiotask.brokers.base import QueueStats
    from aiotask.deadletters import DeadLetterInfo, DeadLetterReport

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
QueueOpt = Annotated[
    str, typer.Option("-Q", "--queues", help="comma-separated queues (default: every known one)")
]
TaskOpt = Annotated[str, typer.Option("--task", help="task name or glob, e.g. proj.*")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="substring of the reason (any case)")]
IdsArg = Annotated[list[str] | None, typer.Argument(help="task ids", show_default=False)]

dlq_cli = typer.Typer(
    name="dlq",
    help="List, show, replay and purge dead-lettered messages.",
    no_args_is_help=True,
)


def _names(raw: str) -> list[str]:
    return [q.strip() for q in raw.split(",") if q.strip()]


def _run(app: App, work: Callable[[App], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with app:
            return await work(app)

    return asyncio.run(go())


def _json(value: object) -> None:
    typer.echo(orjson.dumps(value).decode())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def queues(
    app: AppOpt,
    names: Annotated[
        str,
        typer.Option(
            "-Q", "--queues", help="comma-separated queues to show besides the known ones"
        ),
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Per queue: ready, delayed, in flight and dead letters (? where the broker cannot tell)."""
    the_app, _ = load_app(app)
    stats: list[QueueStats] = _run(the_app, lambda a: a.dead_letters.queue_stats(_names(names)))
    if as_json:
        _json(
            [
                {
                    "queue": s.queue,
                    "ready": s.ready,
                    "delayed": s.delayed,
                    "in_flight": s.in_flight,
                    "dead": s.dead,
                }
                for s in stats
            ]
        )
        return
    rows = [("QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD")]
    rows += [
        (s.queue, str(s.ready), _count(s.delayed), _count(s.in_flight), str(s.dead)) for s in stats
    ]
    width = max(len(r[0]) for r in rows)
    for r in rows:
        typer.echo(f"{r[0]:<{width}}  {r[1]:>7}  {r[2]:>7}  {r[3]:>9}  {r[4]:>7}")


@dlq_cli.callback()
def dlq(ctx: typer.Context, app: AppOpt = "") -> None:
    """Dead letters: messages rejected by their task, undecodable, or past max_deliveries."""
    ctx.obj = app


def _app(ctx: typer.Context, app: str) -> App:
    return group_app(ctx.obj, app)[0]


def _line(d: DeadLetterInfo) -> str:
    return f"{d.id}  {d.task or '?'}  {d.queue}  {_when(d.died_at)}  {d.reason}"


@dlq_cli.command("list")
def list_(
    ctx: typer.Context,
    app: AppOpt = "",
    names: QueueOpt = "",
    task: TaskOpt = "",
    reason: ReasonOpt = "",
    limit: Annotated[int, typer.Option("--limit", min=0, help="show at most N; 0: all")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Dead letters, oldest first per queue: id, task, queue, when, reason."""
    the_app = _app(ctx, app)
    found: list[DeadLetterInfo] = _run(
        the_app,
        lambda a: a.dead_letters.list(
            queue=_names(names) or None,
            task=task or None,
            reason=reason or None,
            limit=limit or None,
        ),
    )
    if as_json:
        _json([d.to_dict() for d in found])
        return
    for d in found:
        typer.echo(_line(d))
    if not found:
        typer.echo("no dead letters")


@dlq_cli.command()
def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="the task id")],
    app: AppOpt = "",
    names: QueueOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """One dead letter with its message: arguments, retries, headers (or the raw body)."""
    the_app = _app(ctx, app)
    info: DeadLetterInfo | None = _run(
        the_app, lambda a: a.dead_letters.show(task_id, queue=_names(names) or None)
    )
    if info is None:
        raise ConfigurationError(f"{task_id!r} is not a dead letter (see aiotask dlq list)")
    data = info.to_dict(full=True)
    if as_json:
        _json(data)
        return
    for key, value in data.items():
        shown = _when(value) if key == "died_at" else value
        if not isinstance(shown, str):
            shown = orjson.dumps(shown).decode()
        typer.echo(f"{key}: {shown}")


def _report(report: DeadLetterReport, verb: str, as_json: bool) -> None:
    if as_json:
        _json({verb: report.ids, "missing": report.missing})
    else:
        typer.echo(f"{verb} {len(report.ids)} dead letter(s)")
        for ident in report.ids:
            typer.echo(f"  {ident}")
    if report.missing:
        shown = ", ".join(report.missing)
        typer.echo(f"Error: not a dead letter (nothing done for it): {redact(shown)}", err=True)
        raise typer.Exit(2)


@dlq_cli.command()
def replay(
    ctx: typer.Context,
    ids: IdsArg = None,
    app: AppOpt = "",
    replay_all: Annotated[
        bool, typer.Option("--all", help="every dead letter the filters match")
    ] = False,
    names: QueueOpt = "",
    task: TaskOpt = "",
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Send dead letters back to their queue, delivery counter reset (copy first, then delete)."""
    the_app = _app(ctx, app)
    chosen = list(ids or [])
    if bool(chosen) == replay_all:
        raise ConfigurationError(
            "give the task ids to replay, or --all (with -Q/--task/--reason to narrow it), not both"
        )
    report: DeadLetterReport = _run(
        the_app,
        lambda a: a.dead_letters.replay(
            chosen or None, queue=_names(names) or None, task=task or None, reason=reason or None
        ),
    )
    _report(report, "replayed", as_json)


@dlq_cli.command()
def purge(
    ctx: typer.Context,
    ids: IdsArg = None,
    app: AppOpt = "",
    names: QueueOpt = "",
    task: TaskOpt = "",
    reason: ReasonOpt = "",
    force: Annotated[bool, typer.Option("-f", "--force", help="do not ask")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good: these ids, or every one the filters match."""
    the_app = _app(ctx, app)
    chosen = list(ids or [])
    if not chosen and not force and sys.stdin.isatty():
        what = "matching " if (names or task or reason) else ""
        typer.confirm(f"Delete every {what}dead letter for good?", abort=True)
    report: DeadLetterReport = _run(
        the_app,
        lambda a: a.dead_letters.purge(
            chosen or None, queue=_names(names) or None, task=task or None, reason=reason or None
        ),
    )
    _report(report, "purged", as_json)


def register(cli: typer.Typer) -> None:
    """Add `queues` and `dlq` to the main `aiotask` command."""
    cli.command()(queues)
    cli.add_typer(dlq_cli)
