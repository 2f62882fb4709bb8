"""`aiotask worker --workers N`: the command lines of the children and the parent's banner.

Choices (docs/scaling.md): every child gets the parent's options; `-c`, `--prefetch` and `-P`
are per child. `-P 0` (one pool process per CPU, the default) becomes CPUs // N per child
(at least 1), so N children do not start N x CPUs pool processes. Only child 1 embeds beat
(`--beat`); child i serves metrics on `--metrics-port` + i - 1.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING

import typer

from aiotask.cli import _observe
from aiotask.cli._run_worker import WorkerOptions, queue_names
from aiotask.worker import Worker
from aiotask.worker.supervisor import Supervisor

if TYPE_CHECKING:
    from aiotask.app import App


def pool_size(the_app: App, processes: int | None, n_workers: int) -> int:
    """Pool processes per child: as given, or the CPUs shared out between the children."""
    given = processes if processes is not None else the_app.conf.processes
    return given or max(1, (os.cpu_count() or 1) // n_workers)


def child_argv(opts: WorkerOptions, index: int, name: str, processes: int) -> list[str]:
    """One child's command line: the parent's options, its own name, no --workers."""
    argv = [sys.executable, "-m", "aiotask", "worker", "-A", opts["app"], "-n", name]
    argv += ["-P", str(processes), "--log-format", opts["log_format"]]
    pairs = {
        "-Q": opts["queues"],
        "-c": opts["concurrency"],
        "--prefetch": opts["prefetch"],
        "-l": opts["loglevel"],
        "--max-tasks-per-child": opts["max_tasks_per_child"],
        "--max-memory-per-child": opts["max_memory_per_child"],
        "--logfile": opts["logfile"],
        "--metrics-port": opts["metrics_port"] + index - 1 if opts["metrics_port"] else None,
    }
    for flag, value in pairs.items():
        if value not in (None, ""):
            argv += [flag, str(value)]
    if opts["keep_logging"]:
        argv.append("--keep-logging")
    if opts["events"]:
        argv.append("-E")
    if opts["embed_beat"] and index == 1:
        argv.append("--beat")
    return argv


def supervise_workers(the_app: App, opts: WorkerOptions, n_workers: int) -> int:
    """Print the banner, run the supervising parent, return its exit code."""
    _observe.setup_logging(
        the_app, opts["loglevel"], opts["log_format"], opts["logfile"], opts["keep_logging"]
    )
    base = opts["name"] or f"aiotask@{socket.gethostname()}-{os.getpid()}"
    names = [f"{base}-{i}" for i in range(1, n_workers + 1)]
    processes = pool_size(the_app, opts["processes"], n_workers)
    shown = Worker(
        the_app,
        queues=queue_names(opts),
        concurrency=opts["concurrency"],
        processes=processes,
        prefetch=opts["prefetch"],
        name=base,
        beat=opts["embed_beat"],
        events=opts["events"] or None,
    )
    lines = shown.banner().splitlines()
    lines[0] = f"aiotask worker {base} (supervisor, pid {os.getpid()})"
    lines.insert(1, f"  workers:      {n_workers} processes: {names[0]} .. {names[-1]}")
    lines = [line.replace("coroutines,", "coroutines per worker,") for line in lines]
    if opts["embed_beat"]:
        lines.insert(2, f"  beat:         embedded in {names[0]}")
    typer.echo("\n".join(lines), err=True)
    argvs = [(name, child_argv(opts, i, name, processes)) for i, name in enumerate(names, 1)]
    supervisor = Supervisor(argvs)
    code = supervisor.run()
    if supervisor.gave_up is not None:
        typer.echo(f"Error: {supervisor.gave_up}", err=True)
    return code
