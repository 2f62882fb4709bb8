"""Round-robin across fairness keys, for the in-process broker (and its unit tests).

Each key of a queue has its own priority heap; `pop` serves the key at the head of a ring and
moves it to the back, so k keys with ready messages each get every k-th delivery whatever
their backlogs. A key that runs empty leaves the ring and rejoins at the back when a message
arrives. With one key (no fairness in use) a pop is a heap pop plus a one-element rotate.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairHeap(Generic[T]):
    """A queue's ready items: (sort key, seq, item) heaps per fairness key, served in turn."""

    __slots__ = ("_heaps", "_ring")

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, int, T]]] = {}
        self._ring: deque[str] = deque()

    def push(self, key: str, item: tuple[int, int, T]) -> None:
        heap = self._heaps.get(key)
        if heap is None:
            heap = self._heaps[key] = []
            self._ring.append(key)
        heapq.heappush(heap, item)

    def pop(self) -> T | None:
        """The next item in round-robin order across keys (highest priority within a key)."""
        if not self._ring:
            return None
        key = self._ring[0]
        heap = self._heaps[key]
        item = heapq.heappop(heap)[2]
        if heap:
            self._ring.rotate(-1)
        else:
            self._ring.popleft()
            del self._heaps[key]
        return item

    def keys(self) -> list[str]:
        """The keys with ready items, in the order they will next be served."""
        return list(self._ring)

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())
