"""Plain-function tasks for the process-pool tests (importable, so pool children load them).

Tasks that must stay running while the test acts on them rendezvous over FIFOs: the child
writes its pid to `<dir>/started`, then blocks until the test writes to `<dir>/go`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from aiotask import App, TaskContext
from aiotask.exceptions import Reject, SoftTimeLimitExceeded, WorkerLost

app = App("pool", broker="memory://", backend="memory://", shutdown_grace=5.0)
#: memory a child keeps on purpose (max_memory_per_child)
_hoard: list[bytes] = []


def rendezvous(where: str) -> str:
    """Tell the test we are running (and where), then wait for its go-ahead."""
    Path(where, "started").write_text(str(os.getpid()))
    return Path(where, "go").read_text()


@app.task
async def ping() -> str:
    return "pong"


@app.task
def whoami() -> int:
    return os.getpid()


@app.task
def echo(value: str) -> str:
    return value


@app.task
def rejects() -> None:
    raise Reject("not for me", requeue=False)


@app.task
def exits(code: int) -> None:
    os._exit(code)


@app.task(bind=True, autoretry_for=(WorkerLost,), max_retries=1, default_retry_delay=0.01)
def killed_once(ctx: TaskContext) -> int:
    if ctx.retries == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return ctx.retries


@app.task(time_limit=0.5)
def stuck() -> None:
    time.sleep(30)


@app.task(soft_time_limit=0.3, time_limit=10)
def cleans_up() -> str:
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task
def blocks(where: str) -> str:
    return rendezvous(where)


@app.task(bind=True)
def reports(ctx: TaskContext, where: str) -> dict[str, Any]:
    _ = ctx.update_state("PROGRESS", {"step": 1})  # a child sends (and stores) it at call time
    return {
        "id": ctx.id,
        "name": ctx.name,
        "args": ctx.args,
        "retries": ctx.retries,
        "root": ctx.root_id,
        "go": rendezvous(where),
    }


@app.task(bind=True, max_retries=3)
def retries_itself(ctx: TaskContext) -> int:
    if ctx.retries < 2:
        raise ctx.retry(exc=ValueError(f"attempt {ctx.retries}"), countdown=0.01)
    return ctx.retries


@app.task
def hoards(megabytes: int) -> int:
    _hoard.append(b"\x01" * (megabytes << 20))  # touched, so resident
    return os.getpid()
