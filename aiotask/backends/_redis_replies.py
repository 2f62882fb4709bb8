"""Results pushed to the producer that waits for them: one Redis channel per process.

After `send()` returns, `get()` used to read the result key (a round trip) even when the
result had been stored before: on RabbitMQ it usually is, since the publish's confirm comes
after the worker's ack. So a process that waits for results names its own channel in the
messages it sends (`Message.reply_to`); the worker's store script publishes the record there
too, and the record is in this process before `get()` starts. Celery's RPC backend works the
same way (`reply_to`); so does the raw floor of the benchmarks.

Only while this process's waits use it (`_credit`): one that sends without waiting stops
naming its channel after a few sends, so the workers publish nothing for it. Expectations are
bounded in number (EXPECT_MAX) and age (EXPECT_TTL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

#: at most this many results expected at once; the oldest expectation goes first
EXPECT_MAX = 256
#: seconds an expectation lasts without its wait
EXPECT_TTL = 10.0


class Replies:
    """The expectations of one result backend, and the pushes on its reply channel."""

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        #: result key -> (future of its pushed record, when it was sent), oldest first
        self._expected: dict[bytes, tuple[asyncio.Future[bytes], float]] = {}
        #: waits minus expectations dropped unused: sends name the channel while positive
        self._credit = 0

    def expect(self, key: bytes, loop: asyncio.AbstractEventLoop) -> bool:
        """A result for `key` will likely be waited for: True if the send should name the
        reply channel (this process has waited lately), and the push is then kept."""
        if key in self._expected:
            return True
        now = loop.time()
        self._sweep(now)  # first: what it drops unused costs credit
        if self._credit <= 0:
            return False
        self._expected[key] = (loop.create_future(), now)
        return True

    def begin_wait(self, key: bytes) -> asyncio.Future[bytes] | None:
        """Count a wait (it earns the credit); the future of `key`'s push, if it was expected
        (done when the record came already). The expectation ends: the wait owns it."""
        self._credit = min(self._credit + 1, EXPECT_MAX)
        entry = self._expected.pop(key, None)
        return None if entry is None else entry[0]

    def pushed(self, payload: bytes) -> None:
        """A record published on the reply channel: `<len(key)> <key><record>`."""
        size, _, rest = payload.partition(b" ")
        if not size.isdigit():
            return  # not what the store script sends: ignored, the wait reads the key
        n = int(size)
        entry = self._expected.get(rest[:n])
        if entry is not None and not entry[0].done():
            entry[0].set_result(rest[n:])

    def _sweep(self, now: float) -> None:
        """Drop expectations past EXPECT_TTL, and the oldest beyond EXPECT_MAX."""
        expected = self._expected
        while expected:
            key, (fut, since) = next(iter(expected.items()))
            if len(expected) < EXPECT_MAX and now - since < EXPECT_TTL:
                return
            del expected[key]
            self._credit -= 1
            fut.cancel()

    def close(self) -> None:
        for fut, _ in self._expected.values():  # nobody waits on these: no error to report
            fut.cancel()
        self._expected.clear()
