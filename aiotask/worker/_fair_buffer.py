"""The worker's buffer of deliveries waiting for a slot, started round-robin across keys.

The broker serves a queue round-robin across fairness keys (docs/task-options.md), but a
worker whose prefetch exceeds its concurrency holds claimed messages until a slot frees: a
FIFO buffer would start every buffered message of a busy key before a newly claimed one of
another key. So each key (the message's `aiotask-fair-key` header; "" without one) has its
own FIFO, and `popleft` serves the key at the head of a ring and moves it to the back. With
no keys in use this is one deque behind a dict lookup.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from aiotask.coordination.fairness import FAIR_HEADER

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiotask.brokers.base import Delivery
    from aiotask.protocol import Message

#: (delivery, its decoded message, revoked)
Item = tuple["Delivery", "Message", bool]


class FairBuffer:
    """A deque-like buffer (append, popleft, len, iter, clear) fair across keys."""

    __slots__ = ("_len", "_queues", "_ring")

    def __init__(self) -> None:
        self._queues: dict[str, deque[Item]] = {}
        self._ring: deque[str] = deque()
        self._len = 0

    def append(self, item: Item) -> None:
        key = item[1].headers.get(FAIR_HEADER, "")
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._ring.append(key)
        queue.append(item)
        self._len += 1

    def popleft(self) -> Item:
        """The next item: the head of the key whose turn it is (IndexError when empty)."""
        key = self._ring[0]
        queue = self._queues[key]
        item = queue.popleft()
        self._len -= 1
        if queue:
            self._ring.rotate(-1)
        else:
            self._ring.popleft()
            del self._queues[key]
        return item

    def clear(self) -> None:
        self._queues.clear()
        self._ring.clear()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Item]:
        """Every item, key by key in turn order (not the exact start order)."""
        for key in self._ring:
            yield from self._queues[key]
