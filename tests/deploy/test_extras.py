"""A base install (no redis, no aio-pika) works on SQLite and names the extra for the rest.

The client libraries are hidden from a subprocess by a meta-path finder installed through
sitecustomize, so the real import machinery runs exactly as on a machine without them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, os, sys

    BLOCKED = set(os.environ["TEST_BLOCKED_MODULES"].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".", 1)[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from aiotask import App
    from aiotask.exceptions import ConfigurationError

    async def main(url: str) -> None:
        app = App("x", broker=url)
        try:
            async with app:
                pass
        except ConfigurationError as exc:
            print("ConfigurationError:", exc)
        else:
            print("connected")

    asyncio.run(main(sys.argv[1]))
    """
)


def run(tmp_path: Path, blocked: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "probe.py").write_text(SCRIPT)
    env = {"PYTHONPATH": str(tmp_path), "TEST_BLOCKED_MODULES": blocked, "PATH": "/usr/bin:/bin"}
    command = [sys.executable, *(args or (str(tmp_path / "probe.py"), url))]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("redis://127.0.0.1:1/0", "redis"),
        ("amqp://guest:secret@127.0.0.1:1/", "rabbitmq"),
    ],
)
def test_missing_client_library_names_the_extra(tmp_path: Path, url: str, extra: str) -> None:
    result = run(tmp_path, "redis,hiredis,aio_pika,aiormq", url)
    assert result.returncode == 0, result.stderr
    assert "ConfigurationError:" in result.stdout
    assert f"pip install 'aiotask[{extra}]'" in result.stdout
    assert "secret" not in result.stdout


def test_redis_backend_alone_names_the_extra(tmp_path: Path) -> None:
    """An AMQP broker with a Redis result backend: the backend names the redis extra."""
    script = textwrap.dedent(
        """
        from aiotask import App
        from aiotask.exceptions import ConfigurationError
        app = App("x", broker="memory://", backend="redis://127.0.0.1:1/0")
        try:
            app.backend
        except ConfigurationError as exc:
            print("ConfigurationError:", exc)
        """
    )
    result = run(tmp_path, "redis,hiredis", "", "-c", script)
    assert "the Redis result backend needs the 'redis' package" in result.stdout, result.stderr
    assert "pip install 'aiotask[redis]'" in result.stdout


def test_base_install_runs_sqlite_and_the_cli(tmp_path: Path) -> None:
    """Without either client library: import, the CLI and the SQLite default all work."""
    blocked = "redis,hiredis,aio_pika,aiormq"
    result = run(tmp_path, blocked, f"sqlite:///{tmp_path}/a.db")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "connected"
    help_out = run(tmp_path, blocked, "", "-m", "aiotask", "--help")
    assert help_out.returncode == 0, help_out.stderr
    assert "worker" in help_out.stdout
    loaded = run(
        tmp_path,
        blocked,
        "",
        "-c",
        "import sys, aiotask.cli; print(sorted("
        "m for m in ('redis', 'aio_pika') if m in sys.modules))",
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr
