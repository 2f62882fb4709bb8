"""aiotask: an asyncio-native distributed job framework."""

from __future__ import annotations

from aiotask import exceptions, states
from aiotask.app import App
from aiotask.canvas import Chain, Chord, Group, Signature, chain, chord, chunks, group, signature
from aiotask.context import TaskContext, current_task
from aiotask.result import AsyncResult, GroupResult
from aiotask.settings import Settings
from aiotask.task import Task

__all__ = [
    "App",
    "AsyncResult",
    "Chain",
    "Chord",
    "Group",
    "GroupResult",
    "Settings",
    "Signature",
    "Task",
    "TaskContext",
    "chain",
    "chord",
    "chunks",
    "current_task",
    "exceptions",
    "group",
    "signature",
    "states",
]
__version__ = "0.1.0"
