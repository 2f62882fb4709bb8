"""`aiotask --version`, and every command's --help: fits 80 columns, every option explained,
no sentinel default shown (the worker's "0 means the setting" values show the setting)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import aiotask
from aiotask.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def commands() -> list[tuple[list[str], Any]]:
    out: list[tuple[list[str], Any]] = []

    def walk(path: list[str], command: Any) -> None:
        out.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk([*path, name], sub)

    walk([], typer.main.get_command(cli))
    return out


COMMANDS = commands()


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "aiotask" for p, _ in COMMANDS]
)
def test_help_fits_80_columns_and_explains_every_option(path: list[str], command: Any) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.output
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    assert "…" not in text, text  # a truncated option name or help
    for param in command.params:
        if param.param_type_name == "option" and not param.hidden:
            assert param.help, f"aiotask {' '.join(path)} {param.opts[-1]} has no help text"
    # sentinels: a default nobody would type, or an empty one
    assert not re.search(r"\[default: (-1|None|''|)[;\]]", text), text


def test_worker_help_shows_the_settings_its_defaults_come_from() -> None:
    text = CliRunner().invoke(cli, ["worker", "--help"], env={"COLUMNS": "80"}).output
    flat = " ".join(text.split())
    for setting in ("concurrency setting, 100", "processes setting, 0", "default_queue"):
        assert setting in flat, text


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aiotask", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert done.stdout.startswith(f"aiotask {project['version']} ")
    assert aiotask.__version__ == project["version"]


def test_no_arguments_prints_the_help_and_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aiotask"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "Commands:" in done.stdout and "worker" in done.stdout
