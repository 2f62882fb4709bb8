"""Logging: module loggers, and the CLI setup that shows task name and id when a record has them."""

from __future__ import annotations

import logging
import sys

from aiotask._urls import redact


def get_logger(name: str) -> logging.Logger:
    """The logger for a module; one per module, named after it."""
    return logging.getLogger(name)


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
