"""Plain CLI values (a string, a whole number, a decimal, a flag) without pydantic.

typer 0.2x coerces every parameter through a pydantic TypeAdapter: importing pydantic-core and
building one adapter per option was about a third of the CPU of a short `aiotask` command (and
of a worker start, whose command line has sixteen options). Every option of `aiotask` is a str,
int, float or bool, and nearly every value given is plainly valid: those are converted here.
Anything else (a value pydantic would reject or convert differently, a constrained or unusual
parameter) goes to typer's own coercion, so error messages and results stay typer's.

This hooks a private function of typer (`typer.core.build_runtime_param`); when a typer version
lacks it, nothing is installed and typer works as before, only slower to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")
_MISSING = object()


def _plain(annotation: object, value: object) -> object:
    """The value typer would produce, or _MISSING when unsure (typer then decides)."""
    if annotation is str:
        return value if isinstance(value, str) else _MISSING
    if annotation is bool:
        return value if isinstance(value, bool) else _MISSING
    if isinstance(value, str):
        if annotation is int and _INT.fullmatch(value):
            return int(value)
        if annotation is float and _FLOAT.fullmatch(value):
            return float(value)
    elif type(value) is annotation:  # a default: already an int or float
        return value
    return _MISSING


def install() -> bool:
    """Put the fast path in front of typer's coercion; False when this typer has no such hook."""
    try:
        from typer import _coercion, core
    except ImportError:  # pragma: no cover - another typer layout
        return False
    found: Callable[[Any], Any] | None = getattr(core, "build_runtime_param", None)
    base: Any = getattr(_coercion, "RuntimeParam", None)
    if found is None or base is None or getattr(found, "_aiotask_fast", False):
        return False
    original: Callable[[Any], Any] = found

    @dataclass(frozen=True)
    class PlainRuntimeParam(base):  # type: ignore[misc]
        """Converts plain values itself; hands anything else to typer's own coercion."""

        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            plain = _plain(self.annotation, value)
            if plain is not _MISSING and self._in_range(plain):
                return plain
            return original(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

        def _in_range(self, value: object) -> bool:
            if not isinstance(value, int | float) or isinstance(value, bool):
                return True
            low, high = self.parameter_info.min, self.parameter_info.max
            return (low is None or value >= low) and (high is None or value <= high)

    def build(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        if (
            descriptor.annotation in (str, int, float, bool)
            and descriptor.file_annotation is None
            and info.parser is None
            and getattr(info, "click_type", None) is None
            and not descriptor.is_choice
        ):
            return PlainRuntimeParam(
                parameter_info=info, annotation=descriptor.annotation, descriptor=descriptor
            )
        return original(descriptor)

    build._aiotask_fast = True  # type: ignore[attr-defined]
    core.build_runtime_param = build  # type: ignore[attr-defined]
    return True
