"""Process-wide notifications from the I/O layers to monitors (aiotask.metrics).

Stdlib only, so the lowest layers (the Redis client, brokers) can call it. With no listener
registered a call costs one empty-list check; it is made only on connection failures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: called with the server kind ("Redis", "RabbitMQ") each time a connection failure starts a
#: reconnect (an operation that found Redis unreachable, a lost AMQP consume connection)
reconnect_listeners: list[Callable[[str], None]] = []


def reconnecting(server: str) -> None:
    """Tell the listeners a connection to `server` was lost and is being re-established."""
    for listener in reconnect_listeners:
        listener(server)
