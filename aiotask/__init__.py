"""aiotask: an asyncio-native distributed job framework."""

from __future__ import annotations

from aiotask import exceptions, states
from aiotask.app import App
from aiotask.context import TaskContext, current_task
from aiotask.result import AsyncResult, GroupResult
from aiotask.settings import Settings
from aiotask.task import Task

__all__ = [
    "App",
    "AsyncResult",
    "GroupResult",
    "Settings",
    "Task",
    "TaskContext",
    "current_task",
    "exceptions",
    "states",
]
__version__ = "0.1.0"
