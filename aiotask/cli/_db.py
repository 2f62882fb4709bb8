"""`aiotask db upgrade`: create or migrate the tables of a PostgreSQL broker and backend.

The broker and backend also migrate on connect; this command lets a deploy step do it ahead of
time (with the rights to run DDL), so workers and producers can run as a user that has none.
Migrations are versioned per component and idempotent: running it twice changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Annotated

import typer

from aiotask._extras import require
from aiotask._urls import redact
from aiotask.cli._loader import group_app
from aiotask.exceptions import AiotaskError

if TYPE_CHECKING:
    from aiotask.app import App

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]

db_cli = typer.Typer(
    name="db",
    help="Create or migrate the tables of a PostgreSQL broker / result backend.",
    no_args_is_help=True,
)

_PG = ("postgresql://", "postgres://")


@db_cli.callback()
def _db(ctx: typer.Context, app: AppOpt = "") -> None:
    """Create or migrate the tables of a PostgreSQL broker / result backend."""
    ctx.obj = app


def _targets(app: App) -> list[tuple[str, str]]:
    """(component, url) for each part of the app that lives in PostgreSQL."""
    found: list[tuple[str, str]] = []
    if app.conf.broker_url.lower().startswith(_PG):
        found.append(("broker", app.conf.broker_url))
    backend = app.conf.backend_url
    if backend is not None and backend.lower().startswith(_PG):
        found.append(("backend", backend))
    return found


async def _upgrade(app: App, check: bool) -> list[tuple[str, str, int, int]]:
    """(component, shown url, version before, version after) for each target."""
    pg = require("aiotask._postgres", what="aiotask db")
    schema = require("aiotask._postgres.schema", what="aiotask db")
    conf = app.conf
    done: list[tuple[str, str, int, int]] = []
    for component, url in _targets(app):
        opts = pg.options(url, conf.key_prefix)
        db = pg.Database(opts, conf.broker_unreachable_timeout)
        try:
            if check:
                have = await db.run(
                    functools.partial(schema.version, schema=opts.schema, component=component),
                    "read the schema version",
                )
                done.append((component, opts.shown, have, schema.newest(component)))
            else:
                before, after = await db.run(
                    functools.partial(schema.migrate, schema=opts.schema, component=component),
                    "migrate the tables",
                )
                done.append((component, opts.shown, before, after))
        finally:
            await db.close()
    return done


@db_cli.command()
def upgrade(
    ctx: typer.Context,
    app: AppOpt = "",
    check: Annotated[
        bool,
        typer.Option("--check", help="change nothing; exit 1 when a migration is pending"),
    ] = False,
) -> None:
    """Bring the app's schema (named by key_prefix) to the newest version; safe to repeat."""
    try:
        the_app, _ = group_app(ctx.obj, app)
        if not _targets(the_app):
            typer.echo(
                f"nothing to do: neither the broker ({redact(the_app.conf.broker_url)}) nor "
                "the result backend is PostgreSQL"
            )
            return
        done = asyncio.run(_upgrade(the_app, check))
    except AiotaskError as exc:
        typer.echo(f"Error: {redact(str(exc))}", err=True)
        raise typer.Exit(2) from None
    behind = False
    for component, shown, before, after in done:
        schema_name = the_app.conf.key_prefix
        if check:
            state = "up to date" if before >= after else f"pending: {before} -> {after}"
            behind = behind or before < after
            typer.echo(f"{component}: schema {schema_name} on {shown}: version {before} ({state})")
        elif before >= after:
            typer.echo(
                f"{component}: schema {schema_name} on {shown}: up to date (version {before})"
            )
        else:
            typer.echo(
                f"{component}: schema {schema_name} on {shown}: migrated {before} -> {after}"
            )
    if behind:
        raise typer.Exit(1)


def register(cli: typer.Typer) -> None:
    """Add `db` to the main `aiotask` command."""
    cli.add_typer(db_cli)
