"""The public surface, snapshotted: `aiotask.__all__`, the exception hierarchy and the signature
of every public callable are compared with tests/unit/public_api.txt, so any change to the API
fails here until the snapshot is updated on purpose:

    .venv/bin/python -m tests.unit.test_public_api    # rewrite the snapshot, then review the diff
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any, Generic, get_overloads

import aiotask
from aiotask import exceptions, states
from aiotask.middleware import Middleware
from aiotask.testing import start_worker

SNAPSHOT = Path(__file__).with_name("public_api.txt")
#: Beyond `aiotask.__all__`: public objects the API contract names in other modules.
EXTRA = {"aiotask.middleware.Middleware": Middleware, "aiotask.testing.start_worker": start_worker}


_BUILTIN_OWNERS = (object, Exception, BaseException, Generic)


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # sentinels' addresses change per run


def _function(prefix: str, fn: Any) -> list[str]:
    """A function's line, and one per @overload (what type checkers see)."""
    kind = "async " if inspect.iscoroutinefunction(fn) else ""
    lines = [f"{kind}{prefix}{_signature(fn)}"]
    lines += [f"  @overload {prefix}{_signature(o)}" for o in get_overloads(fn)]
    return lines


def _members(cls: type) -> list[str]:
    """Public methods and properties, inherited ones included (not object's or Exception's)."""
    lines = []
    for name in sorted(dir(cls)):
        if name.startswith("_") and name != "__call__":
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), object)
        if owner in _BUILTIN_OWNERS:
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property):
            lines.append(f"  .{name}: property")
        elif isinstance(member, classmethod | staticmethod):
            lines += [
                f"  {line}  [{type(member).__name__}]"
                for line in _function(f".{name}", member.__func__)
            ]
        elif inspect.isfunction(member):
            lines += [f"  {line}" for line in _function(f".{name}", member)]
    return lines


def describe(name: str, obj: object) -> list[str]:
    if inspect.ismodule(obj):
        return [f"{name}: module, __all__ = {sorted(getattr(obj, '__all__', []))}"]
    if isinstance(obj, type):
        bases = ", ".join(
            b.__qualname__ if isinstance(b, type) else str(b)  # Generic[P, R], _Base[...]
            for b in getattr(obj, "__orig_bases__", obj.__bases__)
        )
        return [f"{name}({bases}){_signature(obj)}", *_members(obj)]
    if inspect.isfunction(obj):
        return _function(name, obj)
    return [f"{name}: {type(obj).__qualname__}"]


def current() -> str:
    lines = [f"aiotask.__all__ = {aiotask.__all__}", f"aiotask.__version__ = {aiotask.__version__}"]
    for name in aiotask.__all__:
        lines += describe(f"aiotask.{name}", getattr(aiotask, name))
    for name, obj in EXTRA.items():
        lines += describe(name, obj)
    for name in exceptions.__all__:
        lines += describe(f"aiotask.exceptions.{name}", getattr(exceptions, name))
    lines.append(f"aiotask.states.State = {[s.value for s in states.State]}")
    for name in ("READY_STATES",):
        lines.append(f"aiotask.states.{name} = {sorted(str(v) for v in getattr(states, name))}")
    return "\n".join(lines) + "\n"


def test_public_api_matches_the_snapshot() -> None:
    expected = SNAPSHOT.read_text()
    actual = current()
    if actual != expected:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), actual.splitlines(True), "snapshot", "now"
            )
        )
        raise AssertionError(
            "the public API changed; if on purpose, run `python -m tests.unit.test_public_api` "
            f"and commit tests/unit/public_api.txt:\n{diff}"
        )


def test_all_is_sorted_and_has_no_private_names() -> None:
    assert aiotask.__all__ == sorted(aiotask.__all__)
    assert not [n for n in aiotask.__all__ if n.startswith("_")]
    assert exceptions.__all__ == sorted(exceptions.__all__)


def test_exceptions_form_one_hierarchy() -> None:
    """Every name in aiotask.exceptions derives from AiotaskError (the contract's promise)."""
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, exceptions.AiotaskError), name
        assert cls.__module__ == "aiotask.exceptions", name
    assert issubclass(exceptions.ResultTimeout, TimeoutError)
    assert issubclass(exceptions.ProtocolError, exceptions.SerializationError)
    assert issubclass(exceptions.MessageTooLarge, exceptions.SerializationError)


if __name__ == "__main__":
    SNAPSHOT.write_text(current())
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
