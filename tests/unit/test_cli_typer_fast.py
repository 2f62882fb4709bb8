"""aiotask.cli._typer_fast: plain option values converted without pydantic, as typer would."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pytest
import typer
import typer._coercion
import typer.core
from typer.testing import CliRunner

import aiotask.cli._commands  # noqa: F401  (installs the fast path)
from aiotask.cli import _typer_fast

demo = typer.Typer()


@demo.command()
def show(
    name: Annotated[str, typer.Option("--name")] = "x",
    count: Annotated[int, typer.Option("-c", "--count", min=1)] = 1,
    maybe: Annotated[int | None, typer.Option("--maybe", min=0, max=10)] = None,
    ratio: Annotated[float, typer.Option("--ratio", min=0.01)] = 0.5,
    clamped: Annotated[int, typer.Option("--clamped", min=0, max=5, clamp=True)] = 0,
    flag: Annotated[bool, typer.Option("--flag")] = False,
) -> None:
    typer.echo(repr((name, count, maybe, ratio, clamped, flag)))


ARGVS = [
    [],
    ["--name", "a b", "-c", "7", "--maybe", "10", "--ratio", "2.25", "--flag"],
    ["-c", "007", "--ratio", "3", "--maybe", "-0"],
    ["-c", "-2"],  # below min
    ["-c", "0"],
    ["-c", "abc"],
    ["-c", "1.5"],
    ["-c", " 3"],  # unusual: typer decides
    ["-c", "1_000"],
    ["--maybe", "11"],
    ["--ratio", "0"],
    ["--ratio", "1e3"],
    ["--ratio", "nan"],
    ["--clamped", "9"],
    ["--clamped", "-4"],
    ["--name", ""],
]


def run(argv: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(demo, argv)
    return result.exit_code, result.output


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "defaults" for a in ARGVS])
def test_same_values_and_errors_as_typer_alone(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert getattr(getattr(typer.core, "build_runtime_param", None), "_aiotask_fast", False)
    fast = run(argv)
    original = typer._coercion.build_runtime_param
    monkeypatch.setattr(typer.core, "build_runtime_param", original)
    assert fast == run(argv)


def test_install_twice_is_a_no_op() -> None:
    assert _typer_fast.install() is False


def test_a_command_runs_without_pydantic() -> None:
    """The point: a short command never imports pydantic-core (a third of its start-up CPU)."""
    code = (
        "import sys\n"
        "from aiotask.cli import main\n"
        "try:\n"
        "    main(['call', '-A', 'no_such_module_xyz:app', 'proc.add', '--countdown', '2.5'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 2, exc.code\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0].startswith('pydantic')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "cannot import" in done.stderr
    assert done.stdout.strip() == "[]"
