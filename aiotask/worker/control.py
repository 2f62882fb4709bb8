"""The remote control channel: obey revoke broadcasts (skip if queued; terminate if asked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from aiotask._log import get_logger
from aiotask.worker.revocations import remember

if TYPE_CHECKING:
    from aiotask.backends.base import ResultBackend
    from aiotask.worker.executor import Executor

log = get_logger(__name__)


async def obey(backend: ResultBackend, executor: Executor) -> None:
    """Apply each broadcast as it arrives; a malformed one is logged and skipped."""
    async for payload in backend.control():
        try:
            command = orjson.loads(payload)
            op = command.get("op")
            ids = [str(i) for i in command.get("ids", [])]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            log.warning("ignoring a malformed control message: %r", payload[:120])
            continue
        if op != "revoke":
            continue
        remember(executor.revoked, ids)
        if command.get("terminate"):
            for task_id in ids:
                if await executor.terminate(task_id):
                    log.warning("terminating task %s (revoked)", task_id)
