"""Logging: module loggers, and the CLI setup (text or JSON lines, a log file, the user's own
handlers kept) that tags records with the running task and never lets a URL password out."""

from __future__ import annotations

import datetime
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from aiotask._urls import redact

if TYPE_CHECKING:
    from collections.abc import Callable

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How a CLI process set up logging; its pool children repeat it (they are fresh
    interpreters, so nothing is inherited)."""

    level: int
    fmt: LogFormat = "text"
    logfile: str | None = None
    keep: bool = False


#: set by configure(); None while logging is the host application's business
current_settings: LogSettings | None = None


def get_logger(name: str) -> logging.Logger:
    """The logger for a module; one per module, named after it."""
    return logging.getLogger(name)


class RecordFilter(logging.Filter):
    """Added to every handler the worker logs through (its own and the user's kept ones).

    It gives each record `task_name` and `task_id` (from `extra`, else from the task running
    in the current context, else empty strings, so a user's `%(task_id)s` always formats), and
    redacts URL credentials from the message and traceback *before* any formatter sees them:
    a user's handler cannot print a password either.
    """

    def __init__(self, current: Callable[[], tuple[str, str] | None] | None = None) -> None:
        super().__init__()
        self._current = current

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_aiotask_done", False):
            return True  # several handlers share the record: prepare it once
        record._aiotask_done = True
        if not hasattr(record, "task_name"):
            running = self._current() if self._current is not None else None
            name, ident = running if running is not None else ("", "")
            record.task_name, record.task_id = name, ident
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: the handler reports it when formatting, as usual
            return True
        clean = redact(message)
        if clean is not message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _Formatter(logging.Formatter):
    """Appends `[task_name task_id]` when a record carries them, and redacts URLs."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        name = getattr(record, "task_name", None)
        if name:
            text = f"{text} [{name} {getattr(record, 'task_id', '')}]"
        return redact(text)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, process, message,
    task_name/task_id when a task is running, exc (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": redact(record.getMessage()),
        }
        if getattr(record, "task_name", ""):
            line["task_name"] = getattr(record, "task_name", "")
            line["task_id"] = getattr(record, "task_id", "")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = redact(record.exc_text)
        return orjson.dumps(line, default=str).decode()


def make_formatter(fmt: LogFormat = "text") -> logging.Formatter:
    """The formatter of `--log-format`: human text or JSON lines."""
    return JSONFormatter() if fmt == "json" else _Formatter(TEXT_FORMAT)


def configure(
    level: str | int | None = "INFO",
    *,
    fmt: LogFormat = "text",
    logfile: str | None = None,
    keep: bool = False,
    current: Callable[[], tuple[str, str] | None] | None = None,
) -> None:
    """Set up logging for a CLI process; libraries never call this.

    `keep`: the root logger's handlers (the user's `logging.config.dictConfig`, run when the
    app module was imported) stay; ours is added only for `logfile`, or when there is none.
    Otherwise the root handlers are replaced by one on stderr, or on `logfile`. `level`
    (None: leave it) sets the root level. Every handler gets a `RecordFilter` (task fields,
    redaction), the kept ones included.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if logfile is not None:
        # WatchedFileHandler: reopens the file after logrotate moved it. Imported here:
        # logging.handlers (with pickle, queue) is 0.5 MiB of an idle worker that logs to stderr
        from logging.handlers import WatchedFileHandler

        handlers.append(WatchedFileHandler(logfile, encoding="utf-8"))
    elif not keep or not root.handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(make_formatter(fmt))
    root.handlers[:] = [*root.handlers, *handlers] if keep else handlers
    record_filter = RecordFilter(current)
    for handler in _all_handlers():
        if not any(isinstance(f, RecordFilter) for f in handler.filters):
            handler.addFilter(record_filter)
    if level is not None:
        root.setLevel(level if isinstance(level, int) else level.upper())
    global current_settings
    current_settings = LogSettings(root.level, fmt, logfile, keep)


def _all_handlers() -> list[logging.Handler]:
    """The root's handlers and those of every configured logger (a dictConfig may attach
    handlers to named loggers too)."""
    found = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            found += [h for h in logger.handlers if h not in found]
    return found
