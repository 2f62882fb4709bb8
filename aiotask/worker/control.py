"""The remote control channel: obey revoke broadcasts, answer inspect and control requests.

One malformed message (not JSON, a wrong shape, an unknown command, a handler that fails) is
logged and skipped, or answered with an error; it never stops this loop or the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from aiotask._log import get_logger
from aiotask.control.records import decode_request
from aiotask.exceptions import ProtocolError
from aiotask.worker.revocations import remember

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiotask.backends.base import ResultBackend
    from aiotask.worker.commands import Commands
    from aiotask.worker.executor import Executor

log = get_logger(__name__)
#: ops others on the channel use (beats reload on "schedules"): not malformed, not ours
NOT_FOR_WORKERS = frozenset({"schedules"})


async def obey(
    backend: ResultBackend,
    executor: Executor,
    commands: Commands | None = None,
    subscribed: Callable[[], None] | None = None,
) -> None:
    """Apply each broadcast as it arrives; requests are answered by `commands`."""
    async for payload in backend.control(subscribed):
        try:
            await _handle(backend, executor, commands, payload)
        except Exception as exc:  # a bug here must not cost the worker its control channel
            log.warning("control message %r failed: %r", payload[:120], exc)


async def _handle(
    backend: ResultBackend, executor: Executor, commands: Commands | None, payload: bytes
) -> None:
    try:
        command = orjson.loads(payload)
    except orjson.JSONDecodeError:
        log.warning("ignoring a malformed control message (not JSON): %r", payload[:120])
        return
    if isinstance(command, dict) and command.get("op") == "revoke":
        await _revoke(executor, command)
        return
    if isinstance(command, dict) and command.get("op") in NOT_FOR_WORKERS:
        return
    if commands is None:
        return
    try:
        request = decode_request(command)
    except ProtocolError as exc:
        log.warning("ignoring a malformed control message (%s): %r", exc, payload[:120])
        return
    await commands.answer(backend, request)


async def _revoke(executor: Executor, command: dict[str, object]) -> None:
    ids = command.get("ids")
    if not isinstance(ids, list):
        log.warning("ignoring a malformed revoke message: %r", command)
        return
    task_ids = [str(i) for i in ids]
    remember(executor.revoked, task_ids)
    if command.get("terminate"):
        for task_id in task_ids:
            if await executor.terminate(task_id):
                log.warning("terminating task %s (revoked)", task_id)
