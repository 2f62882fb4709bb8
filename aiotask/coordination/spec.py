"""Which limits apply to one message: the task's options, overridden per call by headers.

Per-call options travel as message headers (text), with keys already resolved at send time, so
a worker needs nothing but the message to apply them. A key option is a parameter name or a
callable taking the task's arguments; the budget is then per task *and* key value.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


RATE = "aiotask-rate-limit"  # tasks per second
SCOPE = "aiotask-rate-limit-scope"
RATE_KEY = "aiotask-rate-limit-key"
CONCURRENCY = "aiotask-concurrency-limit"
CONCURRENCY_KEY = "aiotask-concurrency-key"
SCOPES = ("worker", "global")


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one message; keys include the task name (budgets are per task)."""

    rate: float | None = None
    scope: str = "worker"
    rate_key: str = ""
    concurrency: int | None = None
    concurrency_key: str = ""

    @property
    def coordinated(self) -> bool:
        """True when a shared store is needed (global rate or a concurrency limit)."""
        return self.concurrency is not None or (self.rate is not None and self.scope == "global")


def check(task: str, scope: object, concurrency: object, keys: Mapping[str, object]) -> None:
    """Fail at definition (or send) time, naming the task, for a bad option."""
    if scope is not None and scope not in SCOPES:
        raise ConfigurationError(
            f"task {task}: rate_limit_scope must be 'worker' or 'global', got {scope!r}"
        )
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
    ):
        raise ConfigurationError(
            f"task {task}: concurrency_limit must be a positive int, got {concurrency!r}"
        )
    for name, key in keys.items():
        if key is not None and not isinstance(key, str) and not callable(key):
            raise ConfigurationError(
                f"task {task}: {name} must be a parameter name or a callable, got {key!r}"
            )


def key_value(
    key: object,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    fn: Callable[..., Any] | None = None,
    bound: bool = False,
) -> str | None:
    """The key's value for one call as text, or None (no key: the task's shared budget).

    A name is looked up in kwargs, then among the positional arguments by `fn`'s signature.
    """
    if key is None:
        return None
    if isinstance(key, str):
        value = kwargs.get(key) if key in kwargs else _positional(key, args, kwargs, fn, bound)
    else:
        value = key(*args, **kwargs)  # type: ignore[operator]
    return None if value is None else str(value)


def _positional(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    fn: Callable[..., Any] | None,
    bound: bool,
) -> object:
    if fn is None or not args:
        return None
    signature = _signature(fn)
    if signature is None:
        return None
    try:
        arguments = signature.bind_partial(*((None,) if bound else ()), *args, **kwargs).arguments
    except TypeError:
        return None
    return arguments.get(name)


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def call_headers(
    task: str,
    options: Mapping[str, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    fn: Callable[..., Any] | None = None,
    bound: bool = False,
) -> dict[str, str]:
    """Headers carrying per-call limit options (keys resolved now, with this call's arguments)."""
    from aiotask._time import parse_rate  # L0, imported here to keep the module's surface small

    check(
        task,
        options.get("rate_limit_scope"),
        options.get("concurrency_limit"),
        {k: options.get(k) for k in ("rate_limit_key", "concurrency_key")},
    )
    headers: dict[str, str] = {}
    rate = parse_rate(options.get("rate_limit"))
    if rate is not None:
        headers[RATE] = repr(rate)
    if options.get("rate_limit_scope") is not None:
        headers[SCOPE] = str(options["rate_limit_scope"])
    if options.get("concurrency_limit") is not None:
        headers[CONCURRENCY] = str(options["concurrency_limit"])
    for option, header in (("rate_limit_key", RATE_KEY), ("concurrency_key", CONCURRENCY_KEY)):
        value = key_value(options.get(option), args, kwargs, fn, bound)
        if value is not None:
            headers[header] = value
    return headers


def resolve(
    task: str,
    defaults: Limits,
    keys: tuple[object, object],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    headers: Mapping[str, str],
    fn: Callable[..., Any] | None = None,
    bound: bool = False,
) -> Limits:
    """The limits of one message: headers (per call) over the task's options (`defaults`,
    whose keys are the task's key options `keys`, resolved here with the message's arguments)."""
    rate = float(headers[RATE]) if RATE in headers else defaults.rate
    concurrency = int(headers[CONCURRENCY]) if CONCURRENCY in headers else defaults.concurrency
    if rate is None and concurrency is None:
        return Limits()
    rate_key = concurrency_key = None
    if rate is not None:
        rate_key = headers.get(RATE_KEY)
        if rate_key is None:
            rate_key = key_value(keys[0], args, kwargs, fn, bound)
    if concurrency is not None:
        concurrency_key = headers.get(CONCURRENCY_KEY)
        if concurrency_key is None:
            concurrency_key = key_value(keys[1], args, kwargs, fn, bound)
    return Limits(
        rate=rate,
        scope=headers.get(SCOPE, defaults.scope),
        rate_key=task if rate_key is None else f"{task}:{rate_key}",
        concurrency=concurrency,
        concurrency_key=task if concurrency_key is None else f"{task}:{concurrency_key}",
    )
