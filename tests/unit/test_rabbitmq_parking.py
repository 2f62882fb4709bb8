"""A worker parks an idle RabbitMQ key queue (never deletes it) unless something raced the
cancel, and backs off its look at a parked one (fakes for the consumer and the prober)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask.brokers import _rabbitmq_fair as fair
from aiotask.brokers._rabbitmq_topology import Names

if TYPE_CHECKING:
    from collections.abc import Callable

NAMES = Names("p")
NAME = fair.key_queue(NAMES, "q", "k")


class FakeConsumer:
    def __init__(self) -> None:
        self.keyed: dict[str, object] = {}
        self.delivered: dict[str, int] = {}
        self.on_key_cancelled: object = None
        self.during_cancel: Callable[[], None] | None = None
        self._event = asyncio.Event()

    def event(self) -> asyncio.Event:
        return self._event

    def held(self, name: str) -> int:
        return 0

    async def cancel_key(self, name: str) -> bool:
        self.keyed.pop(name, None)
        if self.during_cancel is not None:
            self.during_cancel()
        return True

    def forget_key(self, name: str) -> None:
        self.delivered.pop(name, None)


class FakeProbe:
    def __init__(self) -> None:
        self.result: tuple[int, int] | None = (0, 0)
        self.calls = 0

    async def __call__(self, name: str) -> tuple[int, int] | None:
        self.calls += 1
        return self.result


def consuming() -> tuple[fair.FairConsumer, FakeConsumer, FakeProbe]:
    """A worker consuming key k's queue, idle at once (idle = 0), past its first sweep."""
    con, probe = FakeConsumer(), FakeProbe()
    fpub = fair.FairPublisher(None, NAMES, None)  # type: ignore[arg-type]
    worker = fair.FairConsumer(con, fpub, probe, None)  # type: ignore[arg-type]
    worker.learn("q", ["k"])
    assert worker._pending == {NAME}
    worker._pending.clear()
    con.keyed[NAME] = object()  # consumed
    worker.idle = 0.0
    return worker, con, probe


async def test_an_idle_key_queue_is_parked_not_deleted() -> None:
    worker, con, probe = consuming()
    await worker.sweep()  # notes the deliveries so far
    await worker.sweep()
    assert NAME not in con.keyed
    assert worker._parked[NAME][1] == fair.PARK_CHECK_S
    assert NAME in worker.keys  # kept: looked at later, consumed again on an announcement
    assert probe.calls == 1  # one look after the cancel


async def test_an_announcement_during_the_cancel_keeps_it_consumed() -> None:
    worker, con, _ = consuming()
    con.during_cancel = lambda: worker.learn("q", ["k"])
    await worker.sweep()
    await worker.sweep()
    assert NAME in worker._pending
    assert NAME not in worker._parked


async def test_a_ready_message_found_after_the_cancel_keeps_it_consumed() -> None:
    worker, _, probe = consuming()
    probe.result = (1, 0)  # waiting behind a full prefetch
    await worker.sweep()
    await worker.sweep()
    assert NAME in worker._pending
    assert NAME not in worker._parked


async def test_the_park_check_backs_off_to_a_minute_then_wakes_or_forgets() -> None:
    worker, _, probe = consuming()
    await worker.sweep()
    await worker.sweep()
    intervals = []
    for _ in range(6):
        await worker._look(NAME, 0.0)
        intervals.append(worker._parked[NAME][1])
    assert intervals == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    probe.result = (1, 0)
    await worker._look(NAME, 0.0)
    assert NAME in worker._pending
    assert NAME not in worker._parked
    probe.result = None  # deleted by a user
    worker._parked[NAME] = (0.0, 5.0)
    await worker._look(NAME, 0.0)
    assert NAME not in worker.keys


async def test_a_key_queue_lost_with_its_channel_is_consumed_again() -> None:
    """The consume channel reopened (its consumers gone): the next sweep consumes it again."""
    worker, con, _ = consuming()
    con.keyed.clear()
    await worker.sweep()
    assert NAME in worker._pending
