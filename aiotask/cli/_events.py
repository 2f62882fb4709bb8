"""`aiotask events`: follow the monitoring events live, as a table or as JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from aiotask._urls import redact
from aiotask.cli._loader import load_app

if TYPE_CHECKING:
    from aiotask.app import App
    from aiotask.events import Event, TaskEvent

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]

#: (title, width) of the table's columns; the last one takes the rest of the line.
COLUMNS = (("TIME", 12), ("EVENT", 16), ("TASK", 24), ("ID", 36), ("WORKER", 28), ("QUEUE", 10))


def events(
    app: AppOpt,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per line (JSON Lines), for machines")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="exit after N events; 0: no limit")
    ] = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="exit after S seconds; 0: run until Ctrl-C")
    ] = 0.0,
    types: Annotated[
        str,
        typer.Option(
            "--type", help="only these types, comma-separated globs: 'task-*,worker-online'"
        ),
    ] = "",
) -> None:
    """Follow task and worker events live (workers need -E; task-sent needs the events setting)."""
    the_app, _ = load_app(app)
    patterns = [p.strip() for p in types.split(",") if p.strip()]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_follow(the_app, as_json, limit, timeout, patterns))


async def _follow(app: App, as_json: bool, limit: int, timeout: float, patterns: list[str]) -> None:
    try:
        async with asyncio.timeout(timeout or None):
            await _print_events(app, as_json, limit, patterns)
    except TimeoutError:
        pass
    finally:
        await app.close()


async def _print_events(app: App, as_json: bool, limit: int, patterns: list[str]) -> None:
    from aiotask.events import as_dict, follow  # here: the other commands never load events

    async with follow(app) as feed:
        typer.echo(
            f"following the events of {app.main} on {redact(app.conf.broker_url)} (Ctrl-C to stop)",
            err=True,
        )
        if not as_json:
            typer.echo(_row([title for title, _ in COLUMNS] + ["DETAIL"]))
        seen = 0
        async for event in feed:
            if patterns and not any(fnmatch.fnmatchcase(event.type, p) for p in patterns):
                continue
            line = orjson.dumps(as_dict(event)).decode() if as_json else _row(_cells(event))
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            seen += 1
            if limit and seen >= limit:
                return


def _row(cells: list[str]) -> str:
    out = []
    for (_, width), cell in zip(COLUMNS, cells, strict=False):
        out.append(cell[:width].ljust(width))
    out.extend(cells[len(COLUMNS) :])
    return "  ".join(out).rstrip()


def _cells(event: Event) -> list[str]:
    from aiotask.events import TaskEvent

    when = datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S.%f")[:12]
    if isinstance(event, TaskEvent):
        return [when, event.type, event.task, event.task_id, event.hostname, event.queue,
                _task_detail(event)]  # fmt: skip
    detail = f"pid={event.pid} active={event.active} processed={event.processed}"
    return [when, event.type, "", "", event.hostname, ",".join(event.queues), detail]


def _task_detail(event: TaskEvent) -> str:
    parts = []
    if event.runtime is not None:
        parts.append(f"{event.runtime:.4f}s")
    if event.retries:
        parts.append(f"retries={event.retries}")
    if event.exception_type:
        parts.append(f"{event.exception_type}: {event.exception or ''}".rstrip(": "))
    if event.eta is not None:
        parts.append("eta " + datetime.fromtimestamp(event.eta).strftime("%H:%M:%S"))
    if event.reason:
        parts.append(event.reason)
    return " ".join(parts)


def register(cli: typer.Typer) -> None:
    """Add `aiotask events` to the main `aiotask` command."""
    cli.command()(events)
