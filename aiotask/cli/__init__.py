"""The `aiotask` command: worker, result, call, purge (and the groups in the modules here).

This package's own import stays light: the CLI framework (typer, click, rich and pydantic under
them) loads in `_commands` only when a command line is parsed, and `aiotask worker` re-executes
itself without it (`_run_worker`), so a worker's memory holds none of it. Plain option values
skip pydantic altogether (`_typer_fast`), and each group imports what only its commands use
(the beat runner, the events package) inside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: our errors become one line on stderr and exit code 2 (bad input) or 1."""
    from aiotask.cli._commands import main as run

    run(argv)


def __getattr__(name: str) -> typer.Typer:
    if name == "cli":
        from aiotask.cli._commands import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
