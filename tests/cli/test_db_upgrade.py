"""`aiotask db upgrade`: creates the PostgreSQL tables once, is safe to repeat, --check reports."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from aiotask.cli import cli

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def app_spec(
    postgres_url: str, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    module = f"dbapp_{namespace}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from aiotask import App
            app = App("dbapp", broker={postgres_url!r}, key_prefix={namespace!r})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:app"


def test_upgrade_creates_then_is_a_no_op(app_spec: str, namespace: str) -> None:
    runner = CliRunner()
    check = runner.invoke(cli, ["db", "upgrade", "--check", "-A", app_spec])
    assert check.exit_code == 1, check.output
    assert "broker" in check.output and "pending: 0 ->" in check.output

    first = runner.invoke(cli, ["db", "upgrade", "-A", app_spec])
    assert first.exit_code == 0, first.output
    assert f"broker: schema {namespace}" in first.output and "migrated 0 ->" in first.output
    assert "backend:" in first.output  # the backend defaults to the broker's database

    again = runner.invoke(cli, ["db", "-A", app_spec, "upgrade"])
    assert again.exit_code == 0, again.output
    assert "migrated" not in again.output and again.output.count("up to date") == 2

    assert runner.invoke(cli, ["db", "upgrade", "--check", "-A", app_spec]).exit_code == 0


def test_upgrade_with_no_postgres_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dbapp_sqlite.py").write_text(
        f"from aiotask import App\napp = App('x', broker='sqlite:///{tmp_path}/x.db')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    got = CliRunner().invoke(cli, ["db", "upgrade", "-A", "dbapp_sqlite:app"])
    assert got.exit_code == 0 and "nothing to do" in got.output
