"""Operations: the worker registry, inspect and remote control (`app.control`)."""

from __future__ import annotations

from aiotask.control.api import DEFAULT_TIMEOUT, Control
from aiotask.control.records import CONTROL_COMMANDS, INSPECT_COMMANDS, WorkerInfo

__all__ = ["CONTROL_COMMANDS", "DEFAULT_TIMEOUT", "INSPECT_COMMANDS", "Control", "WorkerInfo"]
