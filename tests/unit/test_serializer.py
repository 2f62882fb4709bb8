from __future__ import annotations

import asyncio

import orjson
import pytest

from aiotask.exceptions import TaskError
from aiotask.serializer import (
    JSON_MAX_DEPTH,
    ExceptionInfo,
    caller_exception,
    exception_to_info,
    find_unencodable,
    info_to_exception,
    unencodable_message,
)


class LocalError(Exception):
    pass


class OddInit(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def test_builtin_exception_round_trip_keeps_type_and_remote_info() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        info = exception_to_info(exc)
    rebuilt = info_to_exception(ExceptionInfo.from_dict(info.to_dict()))
    assert isinstance(rebuilt, ValueError)
    assert str(rebuilt) == "bad value"
    assert rebuilt.remote_type == "builtins.ValueError"  # type: ignore[attr-defined]
    assert "raise ValueError" in rebuilt.remote_traceback  # type: ignore[attr-defined]


def test_importable_user_exception_is_rebuilt() -> None:
    rebuilt = info_to_exception(exception_to_info(LocalError("x")))
    assert type(rebuilt) is LocalError


def test_exception_with_odd_init_is_rebuilt_from_args() -> None:
    rebuilt = info_to_exception(exception_to_info(OddInit(1, 2)))
    assert type(rebuilt) is OddInit


def test_unknown_type_becomes_task_error() -> None:
    info = ExceptionInfo("not_a_module_xyz.Boom", "kaput", "Traceback...")
    rebuilt = info_to_exception(info)
    assert isinstance(rebuilt, TaskError)
    assert rebuilt.remote_type == "not_a_module_xyz.Boom"
    assert "Boom: kaput" in str(rebuilt)


def test_non_exception_type_name_is_not_instantiated() -> None:
    rebuilt = info_to_exception(ExceptionInfo("builtins.print", "x"))
    assert isinstance(rebuilt, TaskError)


def test_find_unencodable_names_the_argument() -> None:
    assert find_unencodable({"args[0]": 1, "args[1]": object()}) == "args[1]"
    assert find_unencodable({"a": 1}) is None


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), asyncio.CancelledError(), GeneratorExit()],
    ids=lambda e: type(e).__name__,
)
def test_only_exception_subclasses_are_rebuilt_for_the_caller(exc: BaseException) -> None:
    """A task's sys.exit() must not make the caller exit: non-Exceptions become TaskError."""
    info = exception_to_info(exc)
    assert type(info_to_exception(info)) is type(exc)  # worker side: classified as raised
    rebuilt = caller_exception(info)
    assert type(rebuilt) is TaskError
    assert rebuilt.remote_type == f"{type(exc).__module__}.{type(exc).__qualname__}"
    assert str(rebuilt).startswith(type(exc).__name__)


def test_a_task_error_standing_in_for_a_remote_exception_keeps_its_type() -> None:
    """What the worker stores for a pool child's unimportable error: its type, not TaskError."""
    stand_in = caller_exception(exception_to_info(SystemExit(3)))
    info = exception_to_info(stand_in)
    assert info.type == "builtins.SystemExit"
    assert info.message == "3"
    assert "SystemExit" in info.traceback
    again = caller_exception(info)
    assert isinstance(again, TaskError)
    assert str(again) == "SystemExit: 3"


def test_unencodable_message_says_why() -> None:
    deep: list[object] = []
    for _ in range(300):
        deep = [deep]
    text = unencodable_message("p.t", {"args[0]": 1, "args[1]": deep})
    assert "'p.t'" in text
    assert "args[1]" in text
    assert f"nesting depth limit ({JSON_MAX_DEPTH} levels" in text
    assert "64-bit range" in unencodable_message("p.t", {"args[0]": 2**70})
    assert "(object) is not JSON-serializable" in unencodable_message("p.t", {"x": object()})
    # too deep only inside a message (two levels more): still found and named
    edge: list[object] = []
    for _ in range(JSON_MAX_DEPTH - 2):
        edge = [edge]
    orjson.dumps(edge)
    assert "argument args[0] is nested deeper" in unencodable_message("p.t", {"args[0]": edge})
    # no argument to blame: the encoder's reason
    assert "message is nested deeper" in unencodable_message(
        "p.t", {"args[0]": 1}, "Recursion limit reached"
    )
    assert unencodable_message("p.t", {}, "Type is not JSON serializable: X").endswith(
        "cannot be encoded as JSON: Type is not JSON serializable: X"
    )


def test_json_max_depth_is_orjson_s() -> None:
    def nest(n: int) -> object:
        value: object = 1
        for _ in range(n):
            value = [value]
        return value

    orjson.dumps(nest(JSON_MAX_DEPTH))
    with pytest.raises(TypeError, match="Recursion limit"):
        orjson.dumps(nest(JSON_MAX_DEPTH + 1))
