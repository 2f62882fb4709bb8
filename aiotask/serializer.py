"""Payload checks and the exception <-> data round trip (payloads are JSON, via orjson)."""

from __future__ import annotations

import builtins
import sys
import traceback
from dataclasses import dataclass
from typing import TypeVar

import orjson

from aiotask.exceptions import TaskError

E = TypeVar("E", bound=BaseException)

#: orjson refuses more nested containers than this (a value that contains itself hits it
#: too); the envelope uses two levels (the message object and the args list or kwargs).
JSON_MAX_DEPTH = 254
_TOO_DEEP = "Recursion limit reached"


def find_unencodable(values: dict[str, object]) -> str | None:
    """The name of the first value JSON cannot encode, for error messages; None if all can."""
    found = why_unencodable(values)
    return found[0] if found else None


def why_unencodable(values: dict[str, object]) -> tuple[str, str] | None:
    """The first value JSON cannot encode and what is wrong with it, in words; None if all can.

    Each value is tried two levels deep, where it sits in a message (the message object, then
    `args` or `kwargs`), so an argument that is too deep only there is found too."""
    for name, value in values.items():
        try:
            orjson.dumps([[value]], option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            return name, _reason(str(exc), value)
    return None


def unencodable_message(task: str, values: dict[str, object], error: str = "") -> str:
    """Why a message for `task` cannot be sent, naming the argument and the rule it breaks.
    `error` is the encoder's own message, used when no single argument is to blame."""
    found = why_unencodable(values)
    if found is not None:
        name, reason = found
        return f"cannot send task {task!r}: argument {name} {reason}"
    if _TOO_DEEP in error:  # e.g. canvas fields or headers added by middleware
        return (
            f"cannot send task {task!r}: the message is nested deeper than the JSON nesting "
            f"depth limit ({JSON_MAX_DEPTH} levels, the message itself included)"
        )
    return f"cannot send task {task!r}: the message cannot be encoded as JSON: {error}"


def _reason(error: str, value: object) -> str:
    if error == _TOO_DEEP:
        return (
            f"is nested deeper than the JSON nesting depth limit ({JSON_MAX_DEPTH} levels, "
            "the message itself included) or contains itself; flatten it"
        )
    if "64-bit" in error:
        return f"holds an integer outside the 64-bit range ({error}); send it as a string"
    return (
        f"({type(value).__name__}) is not JSON-serializable ({error}); pass plain data (str, "
        "int, float, bool, None, list, dict, datetime, UUID, dataclass)"
    )


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """A remote exception as data: its type's import path, message, args and traceback."""

    type: str
    message: str
    traceback: str = ""
    args: tuple[object, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "args": list(self.args),
        }

    @classmethod
    def from_dict(cls, data: object) -> ExceptionInfo:
        if not isinstance(data, dict):
            return cls("builtins.Exception", repr(data))
        args = data.get("args") or []
        return cls(
            str(data.get("type", "builtins.Exception")),
            str(data.get("message", "")),
            str(data.get("traceback", "")),
            tuple(args) if isinstance(args, list) else (),
        )

    @property
    def type_name(self) -> str:
        """The bare class name, e.g. 'ValueError'."""
        return self.type.rpartition(".")[2]


def exception_to_info(exc: BaseException) -> ExceptionInfo:
    """Capture an exception for storage; its args are kept only if JSON can carry them.

    A TaskError standing in for a remote exception (e.g. a pool child's SystemExit, rebuilt
    in the worker) is captured as that remote exception, so the caller sees the real type.
    """
    if isinstance(exc, TaskError) and exc.remote_type:
        return ExceptionInfo(exc.remote_type, exc.remote_message, exc.remote_traceback)
    cls = type(exc)
    module = cls.__module__
    qualname = f"{module}.{cls.__qualname__}"
    remote_tb = getattr(exc, "remote_traceback", None)
    tb = remote_tb if isinstance(remote_tb, str) else "".join(traceback.format_exception(exc))
    args: tuple[object, ...] = ()
    try:
        orjson.dumps(list(exc.args))
        args = tuple(exc.args)
    except TypeError:
        args = ()
    return ExceptionInfo(qualname, str(exc), tb, args)


def info_to_exception(info: ExceptionInfo) -> BaseException:
    """Rebuild the original exception when its class is importable here, else `TaskError`.

    For the worker side (a pool child's error, classified by the parent as if raised there),
    so any BaseException is rebuilt; the caller's side uses `caller_exception()`. Only modules
    already imported in this process are consulted (a result cannot make the caller import
    code). Either way the remote type, message and traceback are attached.
    """
    module_name, _, qualname = info.type.rpartition(".")
    cls: object = None
    module = builtins if module_name == "builtins" else sys.modules.get(module_name)
    if module is not None:
        cls = module
        for part in qualname.split("."):
            cls = getattr(cls, part, None)
    exc = (
        _construct(cls, info)
        if isinstance(cls, type) and issubclass(cls, BaseException)
        else _task_error(info)
    )
    return _attach(exc, info)


def caller_exception(info: ExceptionInfo) -> Exception:
    """What `get()` raises for a failed task: the original class when it is an `Exception`
    importable here, else TaskError. A task that called `sys.exit()` (SystemExit), or raised
    KeyboardInterrupt or CancelledError, must not make the caller exit or look cancelled."""
    exc = info_to_exception(info)
    if isinstance(exc, Exception):
        return exc
    return _attach(_task_error(info), info)


def _task_error(info: ExceptionInfo) -> TaskError:
    return TaskError(
        f"{info.type_name}: {info.message}",
        remote_type=info.type,
        remote_traceback=info.traceback,
    )


def _attach(exc: E, info: ExceptionInfo) -> E:
    exc.remote_type = info.type  # type: ignore[attr-defined]
    exc.remote_message = info.message  # type: ignore[attr-defined]
    exc.remote_traceback = info.traceback  # type: ignore[attr-defined]
    if info.traceback:
        exc.add_note(f"Remote traceback:\n{info.traceback.rstrip()}")
    return exc


def _construct(cls: type[BaseException], info: ExceptionInfo) -> BaseException:
    for args in (info.args, (info.message,)):
        try:
            return cls(*args)
        except Exception:  # noqa: S112 - an exotic __init__: try the next form
            continue
    try:  # keep the type (so `except OddError:` works) without running its __init__
        exc = cls.__new__(cls)
        exc.args = (info.message,)
    except Exception:
        return _task_error(info)
    return exc
