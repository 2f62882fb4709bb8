"""Plain-function tasks run in child processes that import the task's module themselves.

The child receives the task *name*, its module and arguments, never a pickled function. A
child that dies fails its task with WorkerLost and the pool is rebuilt. (A pool with per-job
kill, time limits and recycling by memory is the process-pool issue's work.)
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from aiotask._log import get_logger
from aiotask.exceptions import WorkerLost
from aiotask.serializer import ExceptionInfo, exception_to_info, info_to_exception

log = get_logger(__name__)


def _child_run(module: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """Runs in the child: import the module that registers the task, then call it by name."""
    from aiotask.app import find_task

    importlib.import_module(module)
    task = find_task(name)
    try:
        return True, task.fn(*args, **kwargs)
    except BaseException as exc:
        return False, exception_to_info(exc)


class SyncPool:
    """A lazily started process pool; children start on the first sync task, not before."""

    def __init__(self, processes: int, max_tasks_per_child: int = 0) -> None:
        self.processes = processes or os.cpu_count() or 1
        self._max_tasks = max_tasks_per_child or None
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=self._max_tasks,
            )
        return self._executor

    async def run(self, module: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            ok, value = await loop.run_in_executor(
                self._pool(), _child_run, module, name, args, kwargs
            )
        except BrokenProcessPool:
            log.error("a pool process died while running %s; starting a new pool", name)
            self.close()
            raise WorkerLost(f"the process running {name} died (killed or crashed)") from None
        if ok:
            return value
        assert isinstance(value, ExceptionInfo)  # noqa: S101 - _child_run's contract
        raise info_to_exception(value)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
