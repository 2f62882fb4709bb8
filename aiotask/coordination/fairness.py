"""Fairness across keys: which key a message is served under, resolved at send time.

`fairness_key="tenant_id"` (a parameter name, or a callable taking the task's arguments) puts
each message of a queue under its key's value. The broker then serves the queue round-robin
across the keys that have ready messages, so one key's backlog cannot hold the others behind
it (docs/task-options.md, "Fairness across keys"). The key travels as a header, resolved once
by the sender, and reaches the broker as `Outgoing.fair_key`: opaque text, so brokers stay
byte-level. Messages without a key share one key of their own ("").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiotask.coordination.spec import key_value
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

#: The header carrying a message's resolved fairness key (absent: no key).
FAIR_HEADER = "aiotask-fair-key"
#: Longest key kept; longer values are cut (a key names a tenant, not a payload).
MAX_KEY = 200


def check(task: str, key: object) -> None:
    """Fail at definition (or send) time, naming the task, for a bad `fairness_key`."""
    if key is not None and not isinstance(key, str) and not callable(key):
        raise ConfigurationError(
            f"task {task}: fairness_key must be a parameter name or a callable, got {key!r}"
        )


def fair_headers(
    task: str,
    key: object,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    fn: Callable[..., Any] | None = None,
    bound: bool = False,
) -> dict[str, str]:
    """The header for this call's key value; empty when there is no key or it resolves to None."""
    check(task, key)
    value = key_value(key, args, kwargs, fn, bound)
    if value is None:
        return {}
    return {FAIR_HEADER: value[:MAX_KEY]}


def fair_key(headers: Mapping[str, str]) -> str:
    """The broker-level key of a message ("" when it has none)."""
    return headers.get(FAIR_HEADER, "")
