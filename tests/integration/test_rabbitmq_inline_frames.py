"""`InlineFrames` on a real RabbitMQ: deliveries and confirms are handled in the connection's
reader when the channel's reader is idle (the unit tests, tests/unit/test_rabbitmq_inline.py,
drive it with fake channels; this checks that the path is taken against the server)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pamqp.commands import Basic

from aiotask import App
from aiotask.brokers._rabbitmq_reader import InlineFrames
from aiotask.testing import start_worker

pytestmark = pytest.mark.amqp


async def test_sequential_round_trips_take_the_inline_path(
    amqp_url: str, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: Counter[str] = Counter()
    take = InlineFrames._take

    def counted(self: InlineFrames, item: tuple[Any, Any]) -> bool:
        frame = item[1]
        holding = bool(self._held)
        handled = take(self, item)
        if handled and not holding:  # the first frame of what it took: a delivery or a confirm
            taken[type(frame).__name__] += 1
        return handled

    monkeypatch.setattr(InlineFrames, "_take", counted)
    app = App("inline", broker=amqp_url, backend=redis_url, key_prefix=namespace)

    @app.task
    async def square(x: int) -> int:
        return x * x

    async with start_worker(app):
        got = [await (await square.send(i)).get(timeout=10) for i in range(20)]
    await app.close()
    assert got == [i * i for i in range(20)]
    # one process, one loop: the channels' readers are idle between sequential round trips
    assert taken[Basic.Deliver.__name__] >= 1
    assert taken[Basic.Ack.__name__] >= 1
