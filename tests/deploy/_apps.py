"""A task module for the deployment tests: settings come only from the environment, as in the
shipped configs (AIOTASK_BROKER_URL, AIOTASK_SHUTDOWN_GRACE)."""

from __future__ import annotations

import textwrap
from pathlib import Path

TASKS = textwrap.dedent(
    """
    import asyncio, os
    from aiotask import App

    app = App("deploy")
    LOG = os.environ["TEST_LOG_DIR"]

    def _mark(kind, key):
        with open(os.path.join(LOG, kind), "a") as f:
            f.write(key + "\\n")

    @app.task(name="deploy.slow")
    async def slow(key: str, seconds: float) -> str:
        _mark("started", key)
        await asyncio.sleep(seconds)
        _mark("finished", key)
        return key

    @app.task(name="deploy.hold")
    async def hold(key: str) -> str:
        # runs until the test calls release(directory, key), at most 120 s: no timing guess
        _mark("started", key)
        gate = os.path.join(LOG, "release-" + key)
        for _ in range(6000):
            if os.path.exists(gate):
                break
            await asyncio.sleep(0.02)
        _mark("finished", key)
        return key
    """
)


def write_app(directory: Path) -> Path:
    (directory / "deploy_tasks.py").write_text(TASKS)
    (directory / "logs").mkdir(exist_ok=True)
    return directory


def marks(directory: Path, kind: str) -> list[str]:
    path = directory / "logs" / kind
    return path.read_text().split() if path.exists() else []


def release(directory: Path, *keys: str) -> None:
    """Let the `deploy.hold(key)` tasks finish (at once, when they run later)."""
    for key in keys:
        (directory / "logs" / f"release-{key}").touch()


ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: the margin every shipped stop timeout keeps over shutdown_grace (docs/deployment.md)
STOP_MARGIN = 15
