"""Logging: module loggers, a task adapter carrying task name and id, and the CLI setup."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from aiotask._urls import redact

if TYPE_CHECKING:
    from collections.abc import MutableMapping


def get_logger(name: str) -> logging.Logger:
    """The logger for a module; one per module, named after it."""
    return logging.getLogger(name)


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """Puts `task_name` and `task_id` into each record's `extra`, so every line names its task."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def task_logger(logger: logging.Logger, task_name: str, task_id: str) -> TaskLogger:
    """An adapter for log lines about one task execution."""
    return TaskLogger(logger, {"task_name": task_name, "task_id": task_id})


class _Formatter(logging.Formatter):
    """Appends `[task_name task_id]` when a record carries them, and redacts URLs."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        name = getattr(record, "task_name", None)
        if name is not None:
            text = f"{text} [{name} {getattr(record, 'task_id', '')}]"
        return redact(text)


def configure(level: str | int = "INFO") -> None:
    """Human-readable logs on stderr for the CLI; libraries never call this."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
