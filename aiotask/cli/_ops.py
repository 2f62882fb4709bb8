"""`aiotask status`, `aiotask inspect WHAT` and `aiotask control COMMAND`: talk to workers.

Exit codes: 0 when answered (`status` too, with every worker lost or none known: it read the
store); 1 when no worker replied within the timeout, `status --local` found no online worker
on this host or a worker refused a command, or the
store cannot be reached; 2 for bad input (an unknown destination or command, a bad rate).
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from aiotask._time import now
from aiotask.cli._loader import group_app, load_app
from aiotask.control import DEFAULT_TIMEOUT, INSPECT_COMMANDS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiotask.app import App
    from aiotask.control import WorkerInfo

AppOpt = Annotated[str, typer.Option("-A", "--app", help="module:attribute of your App")]
OptionalAppOpt = Annotated[
    str, typer.Option("-A", "--app", help="module:attribute of your App (here or before)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]
DestOpt = Annotated[
    str, typer.Option("-d", "--destination", help="comma-separated worker names (default: all)")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.01, help="seconds to gather replies")]

control_cli = typer.Typer(
    name="control",
    help="Change running workers: revoke, rate limits, queues, pool size, shutdown.",
    no_args_is_help=True,
)


def _run(the_app: App, work: Callable[[App], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with the_app:
            return await work(the_app)

    return asyncio.run(go())


def _names(destination: str) -> list[str] | None:
    return [n.strip() for n in destination.split(",") if n.strip()] or None


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _ago(ts: float, at: float) -> str:
    return f"{max(at - ts, 0.0):.0f}s ago"


def _status_line(w: WorkerInfo, at: float) -> str:
    started = datetime.fromtimestamp(w.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{w.name}: {w.state(at).upper()}  host={w.host} pid={w.pid} "
        f"queues={','.join(w.queues)} concurrency={w.concurrency} processes={w.processes}\n"
        f"    done={w.done} failed={w.failed} active={w.active} "
        f"load={'/'.join(f'{x:g}' for x in w.load)}  beat {_ago(w.beat_at, at)}  "
        f"started {started}  v{w.version}"
    )


LocalOpt = Annotated[
    bool,
    typer.Option(
        "--local",
        help="only this host's workers; exit 1 unless one is online (a readiness probe)",
    ),
]


def status(app: AppOpt, as_json: JsonOpt = False, local: LocalOpt = False) -> None:
    """Workers known from the store (online or lost); answers with every worker down."""
    the_app, _ = load_app(app)
    workers: list[WorkerInfo] = _run(the_app, lambda a: a.control.workers())
    at = now()
    if local:
        host = socket.gethostname()
        workers = [w for w in workers if w.host == host]
    online = sum(w.state(at) == "online" for w in workers)
    if as_json:
        typer.echo(_json({"workers": [w.to_dict(at) for w in workers]}))
    else:
        for w in workers:
            typer.echo(_status_line(w, at))
        lost = len(workers) - online
        typer.echo(f"{online} online, {lost} lost" if workers else "no workers in the registry")
    if local and not online:
        typer.echo(f"Error: no online worker on {socket.gethostname()}", err=True)
        raise typer.Exit(1)


def inspect(
    what: Annotated[str, typer.Argument(help=" | ".join(INSPECT_COMMANDS))],
    app: AppOpt,
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Ask running workers (over the control channel) and print each one's answer."""
    the_app, _ = load_app(app)
    replies: dict[str, Any] = _run(
        the_app,
        lambda a: a.control.inspect(what, destination=_names(destination), timeout=timeout),
    )
    if as_json:
        typer.echo(_json(replies))
    else:
        for name, answer in sorted(replies.items()):
            typer.echo(_inspect_text(name, what, answer))
    _exit_for(replies, timeout, refused=lambda r: isinstance(r, dict) and "error" in r)


def _inspect_text(name: str, what: str, answer: Any) -> str:
    if isinstance(answer, dict) and set(answer) == {"error"}:
        return f"-> {name}: ERROR {answer['error']}"
    if what == "ping":
        return f"-> {name}: {answer}"
    if isinstance(answer, list):
        lines = [f"-> {name}: {len(answer)} {what}"]
        for item in answer:
            if isinstance(item, dict):
                args = orjson.dumps(item.get("args", [])).decode()
                lines.append(f"    * {item.get('id')} {item.get('name', '?')}{args}")
            else:
                lines.append(f"    * {item}")
        return "\n".join(lines)
    body = "\n".join("    " + line for line in _json(answer).splitlines())
    return f"-> {name}:\n{body}"


def _exit_for(replies: dict[str, Any], timeout: float, refused: Callable[[Any], bool]) -> None:
    if not replies:
        typer.echo(
            f"Error: no worker replied within {timeout:g}s (see `aiotask status`; raise "
            "--timeout for a slow channel)",
            err=True,
        )
        raise typer.Exit(1)
    if any(refused(r) for r in replies.values()):
        raise typer.Exit(1)


# --- aiotask control ---------------------------------------------------------------------


@control_cli.callback()
def control(ctx: typer.Context, app: OptionalAppOpt = "") -> None:
    """Change running workers (the same operations as `app.control.*` in Python)."""
    ctx.obj = app


def _app_of(ctx: typer.Context, app: str) -> App:
    return group_app(ctx.obj, app)[0]


def _command(
    ctx: typer.Context,
    app: str,
    destination: str,
    timeout: float,
    as_json: bool,
    operation: str,
    *args: object,
) -> None:
    """Send one `app.control.<operation>` to the workers and print their replies."""
    dest = _names(destination)

    def call(a: App) -> Awaitable[dict[str, dict[str, Any]]]:
        method = getattr(a.control, operation)
        return method(*args, destination=dest, timeout=timeout)  # type: ignore[no-any-return]

    replies = _run(_app_of(ctx, app), call)
    if as_json:
        typer.echo(_json(replies))
    else:
        for name, reply in sorted(replies.items()):
            text = f"ERROR {reply['error']}" if "error" in reply else f"OK {reply.get('ok')}"
            typer.echo(f"-> {name}: {text}")
    _exit_for(replies, timeout, refused=lambda r: "error" in r)


@control_cli.command()
def revoke(
    ctx: typer.Context,
    task_ids: Annotated[list[str], typer.Argument(help="task ids")],
    app: OptionalAppOpt = "",
    terminate: Annotated[
        bool, typer.Option("--terminate", help="also stop them where they are running")
    ] = False,
) -> None:
    """Revoke tasks everywhere: skipped if not started; stopped with --terminate."""
    the_app = _app_of(ctx, app)
    _run(the_app, lambda a: a.control.revoke(task_ids, terminate=terminate))
    typer.echo(f"revoked {len(task_ids)} task(s){' (terminate)' if terminate else ''}")


@control_cli.command("rate-limit")
def rate_limit(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="registered task name")],
    rate: Annotated[str, typer.Argument(help="N/s, N/m or N/h; 0: no limit")],
    app: OptionalAppOpt = "",
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Set a task's rate limit on running workers (until they restart)."""
    _command(ctx, app, destination, timeout, as_json, "rate_limit", task, rate)


@control_cli.command("add-consumer")
def add_consumer(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="queue name")],
    app: OptionalAppOpt = "",
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Make running workers consume one more queue (until they restart)."""
    _command(ctx, app, destination, timeout, as_json, "add_consumer", queue)


@control_cli.command("cancel-consumer")
def cancel_consumer(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="queue name")],
    app: OptionalAppOpt = "",
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Make running workers stop consuming a queue; prefetched messages are handed back."""
    _command(ctx, app, destination, timeout, as_json, "cancel_consumer", queue)


@control_cli.command("pool-grow")
def pool_grow(
    ctx: typer.Context,
    n: Annotated[int, typer.Argument(help="how many more tasks at once", min=1)] = 1,
    app: OptionalAppOpt = "",
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Raise running workers' concurrency by N."""
    _command(ctx, app, destination, timeout, as_json, "pool_grow", n)


@control_cli.command("pool-shrink")
def pool_shrink(
    ctx: typer.Context,
    n: Annotated[int, typer.Argument(help="how many fewer tasks at once", min=1)] = 1,
    app: OptionalAppOpt = "",
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Lower running workers' concurrency by N (never below 1); running tasks finish."""
    _command(ctx, app, destination, timeout, as_json, "pool_shrink", n)


@control_cli.command()
def shutdown(
    ctx: typer.Context,
    app: OptionalAppOpt = "",
    destination: DestOpt = "",
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
) -> None:
    """Warm shutdown of running workers: finish running tasks, hand back the rest, exit 0."""
    _command(ctx, app, destination, timeout, as_json, "shutdown")


def register(cli: typer.Typer) -> None:
    """Add status, inspect and control to the main `aiotask` command."""
    cli.command()(status)
    cli.command()(inspect)
    cli.add_typer(control_cli)
