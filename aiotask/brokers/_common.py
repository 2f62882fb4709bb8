"""What every broker decides the same way: delivery limits, priorities, dead-letter caps, tokens.

Kept here so the four brokers word their dead-letter reasons alike and clamp alike; each broker
still does the I/O its own way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiotask.brokers.base import Delivery

T = TypeVar("T")

#: Dead letters kept per queue (approximately, on Redis); older ones are dropped.
DEAD_LETTER_CAP = 10_000
#: Highest priority a message may carry; 0 is the lowest.
MAX_PRIORITY = 9


def exhausted(deliveries: int, max_deliveries: int) -> bool:
    """True when a message already delivered `deliveries` times must not be delivered again."""
    return deliveries >= max_deliveries


def exhausted_reason(deliveries: int, max_deliveries: int) -> str:
    """The dead-letter reason for a message that used up its deliveries (same on every broker)."""
    return f"delivered {deliveries} times without being settled (max_deliveries={max_deliveries})"


def clamp_priority(priority: int, highest: int = MAX_PRIORITY) -> int:
    """A priority inside 0..highest (out-of-range values are clamped, never refused)."""
    return min(max(priority, 0), highest)


def text(value: bytes | str) -> str:
    """A server-side string (bytes from redis/sqlite) as text; undecodable bytes replaced."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def tokens(deliveries: Iterable[Delivery], kind: type[T]) -> list[T]:
    """The broker handles of deliveries this broker made; others (foreign) are skipped."""
    return [d.token for d in deliveries if isinstance(d.token, kind)]
