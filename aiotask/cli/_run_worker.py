"""`aiotask worker` after its command line was parsed: load the app, set up logs, run a Worker.

`aiotask worker` parses its options with the CLI framework, then (when this process is the
`aiotask` command itself) replaces itself through `os.execv` with `python -m
aiotask.cli._run_worker <options as JSON>`: same PID, same file descriptors and signals, but an
interpreter whose memory holds no typer, click, rich or pydantic (about 10 MB of an idle
worker's RSS). A program that calls `aiotask.cli.main()` itself keeps running in-process, with
whatever it set up before.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TypedDict

import orjson

from aiotask._urls import redact
from aiotask.cli import _observe
from aiotask.cli._loader import load_app
from aiotask.exceptions import AiotaskError, ConfigurationError

if TYPE_CHECKING:
    from aiotask.worker import Worker


class WorkerOptions(TypedDict):
    """The parsed options of `aiotask worker` (names as in its signature)."""

    app: str
    queues: str
    concurrency: int | None
    processes: int | None
    prefetch: int | None
    name: str
    loglevel: str
    max_tasks_per_child: int | None
    max_memory_per_child: int | None
    metrics_port: int
    log_format: str
    logfile: str
    keep_logging: bool
    embed_beat: bool
    events: bool


def queue_names(options: WorkerOptions) -> list[str] | None:
    """`-Q a,b` as a list; None for the app's default queues."""
    return [q.strip() for q in options["queues"].split(",") if q.strip()] or None


def can_reexec() -> bool:
    """True when this process is the `aiotask` command (console script or `python -m aiotask`).

    Not when user code imported aiotask.cli and called main(): what it set up in-process (a
    patched module, a configured logger) would be lost in a new interpreter.
    """
    if os.name != "posix":  # elsewhere exec starts a new process: supervisors lose the PID
        return False
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("aiotask.__main__", "aiotask"):
        return True
    path = getattr(main, "__file__", None) or ""
    return os.path.basename(path) in ("aiotask", "aiotask.exe", "aiotask-script.py")


# Stop signals are blocked from just before the exec until the worker's own handlers exist: the
# mask and any pending signal survive execve, so a SIGTERM sent while the new interpreter is still
# importing is delivered to the handler as a warm shutdown instead of killing it (exit -15).
_HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def reexec(options: WorkerOptions) -> None:
    """Replace this process with a fresh interpreter running the worker (does not return)."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *_interpreter_options(), "-m", __name__, orjson.dumps(options).decode()]
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module, no shell
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)  # still this process: signals as before
        raise


def _interpreter_options() -> list[str]:
    """This interpreter's own options (`-X importtime`, `-W error`, `-O`), kept across the exec."""
    given = sys.orig_argv[1:]
    for i, arg in enumerate(given):
        if (arg == "-m" and given[i + 1 : i + 2] == ["aiotask"]) or arg == sys.argv[0]:
            return given[:i]
    return []


def run(options: WorkerOptions) -> int:
    """Run the worker until shutdown; returns its exit code."""
    from aiotask.worker import Worker

    the_app, _ = load_app(options["app"])
    _observe.setup_logging(
        the_app,
        options["loglevel"],
        options["log_format"],
        options["logfile"],
        options["keep_logging"],
    )
    probe, stop_metrics = _observe.setup_metrics(options["metrics_port"])
    w = Worker(
        the_app,
        queues=queue_names(options),
        concurrency=options["concurrency"],
        processes=options["processes"],
        prefetch=options["prefetch"],
        name=options["name"] or None,
        max_tasks_per_child=options["max_tasks_per_child"],
        max_memory_per_child=options["max_memory_per_child"],
        probe=probe,
        beat=options["embed_beat"],
        events=options["events"] or None,
    )
    print(w.banner(), file=sys.stderr, flush=True)
    try:
        return asyncio.run(_serve(w))
    finally:
        stop_metrics()


async def _serve(w: Worker) -> int:
    loop = asyncio.get_running_loop()
    w.shutdown.install(loop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)  # a signal held since the exec runs now
    try:
        return await w.run()
    finally:
        w.shutdown.uninstall(loop)


#: Modules that libraries import at their top but an idle worker never uses: loaded on first
#: use instead. redis-py's `redis.utils` imports `importlib.metadata` (with email, zipfile,
#: csv, pathlib...: about 3 MiB of RSS) only to look up its own version, which aiotask hands
#: it (`aiotask._redis.client.driver_kwargs`).
DEFERRED = ("importlib.metadata",)


def defer_imports(names: tuple[str, ...] = DEFERRED) -> None:
    """Register `names` as lazy modules (`importlib.util.LazyLoader`, the standard library's
    own mechanism): `import` binds them at once, and the module's code runs at the first
    attribute access, so code that does use them sees no difference. Only in the worker's own
    interpreter, before the app is loaded; a name already imported is left alone."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:  # pragma: no cover - the stdlib always has it
            continue
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _fail(message: str, code: int) -> int:
    print(f"Error: {redact(message)}", file=sys.stderr, flush=True)
    return code


def _main(argv: list[str]) -> int:
    """The re-executed process: errors as `aiotask.cli.main` reports them (exit 2 or 1)."""
    options: Any = orjson.loads(argv[0])
    defer_imports()
    try:
        return run(options)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    except AiotaskError as exc:
        return _fail(f"{type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
