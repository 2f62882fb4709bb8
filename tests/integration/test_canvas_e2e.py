"""Canvas end to end through a real worker, on every broker that exists."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App, Task
from aiotask.brokers import Outgoing
from aiotask.canvas import chain, chord, group, signature
from aiotask.canvas.runtime import CHORD_BODY_HEADER
from aiotask.protocol import Message, encode
from aiotask.settings import FROM_BROKER
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.worker import Worker


class Boom(Exception):
    pass


@dataclass
class Kit:
    app: App
    add: Task[[int, int], int]
    tsum: Task[[list[int]], int]
    fail: Task[..., None]
    record: Task[..., str]
    seen: Counter[str] = field(default_factory=Counter)
    worker: Worker | None = None
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def drained(self, processed: int) -> None:
        """Wait until the worker has taken `processed` deliveries, stop it (warm: everything it
        ran is settled, follow-ups published), and check that nothing is left in the queue:
        only then is a count of executions final."""
        assert self.worker is not None
        async with asyncio.timeout(60):
            while self.worker.dispatcher.processed < processed:
                await asyncio.sleep(0.02)
        await self.stack.aclose()
        async with self.app:
            try:
                async with asyncio.timeout(1.5):
                    left = await self.app.broker.receive([self.app.conf.default_queue], 10)
            except TimeoutError:
                left = []
        assert left == [], f"{len(left)} message(s) still queued after the worker drained"


def make_kit(url: str, namespace: str, backend: str | None = None) -> Kit:
    app = App(
        f"canvas-{namespace}",
        broker=url,
        backend=backend or FROM_BROKER,
        key_prefix=namespace,
        visibility_timeout=5,
    )
    seen: Counter[str] = Counter()

    @app.task(name="c.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="c.tsum")
    async def tsum(values: list[int]) -> int:
        seen["tsum"] += 1
        return sum(values)

    @app.task(name="c.fail")
    async def fail(*args: Any) -> None:
        raise Boom(f"failed with {args}")

    @app.task(name="c.record")
    async def record(*args: Any) -> str:
        seen[f"record:{args}"] += 1
        return "recorded"

    return Kit(app, add, tsum, fail, record, seen)


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp", "postgres", "sentinel"])
async def kit(request: pytest.FixtureRequest, namespace: str, tmp_path: Any) -> AsyncIterator[Kit]:
    backend = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/canvas.db"
    elif request.param in {"redis", "postgres", "sentinel"}:
        url = request.getfixturevalue(f"{request.param}_url")
    else:
        url = request.getfixturevalue("amqp_url")
        backend = request.getfixturevalue("redis_url")
    k = make_kit(url, namespace, backend)
    async with k.stack:
        k.worker = await k.stack.enter_async_context(start_worker(k.app, concurrency=50))
        yield k


async def test_contract_examples(kit: Kit) -> None:
    add, tsum = kit.add, kit.tsum
    assert await add.s(2, 3)() == 5  # local
    assert await (await add.s(2, 3).send()).get(timeout=10) == 5
    assert await (await (add.s(1, 2) | add.s(3)).send()).get(timeout=10) == 6
    assert await (await chain(add.s(1), add.s(3)).send(3)).get(timeout=10) == 7
    gr = await group(add.s(i, i) for i in range(10)).send()
    assert await gr.get(timeout=10) == [2 * i for i in range(10)]
    assert await gr.completed_count() == 10 and await gr.ready()
    r = await chord(group(add.s(i, i) for i in range(10)), tsum.s()).send()
    assert await r.get(timeout=10) == 90
    assert await (await kit.record.map([1, 2, 3]).send()).get(timeout=10) == ["recorded"] * 3
    assert await (await add.starmap([(1, 2), (3, 4)]).send()).get(timeout=10) == [3, 7]
    chunked = await add.chunks(zip(range(100), range(100), strict=True), 10).send()
    lists = await chunked.get(timeout=10)
    assert len(lists) == 10 and lists[0] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    sig = signature("c.add", args=(2, 3), app=kit.app)
    assert await (await sig.send()).get(timeout=10) == 5


async def test_nesting(kit: Kit) -> None:
    add, tsum = kit.add, kit.tsum
    # chain of groups (group | task is a chord), continuing after the body
    r = await (group(add.s(1, 1), add.s(2, 2)) | tsum.s() | add.s(100)).send()
    assert await r.get(timeout=10) == 106
    # group of chains
    gr = await group(add.s(1, 1) | add.s(10), add.s(2, 2) | add.s(20)).send()
    assert await gr.get(timeout=10) == [12, 24]
    # chord whose header holds chains
    r = await chord([add.s(1, 1) | add.s(1), add.s(5, 5)], tsum.s()).send()
    assert await r.get(timeout=10) == 13
    # chord inside a chain, then a chord in the header of a chord
    r = await (add.s(1, 1) | chord([add.s(1), add.s(2)], tsum.s()) | add.s(1)).send()
    assert await r.get(timeout=10) == 8
    inner = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    r = await chord([inner, add.s(10, 10)], tsum.s()).send()
    assert await r.get(timeout=10) == 26


async def test_a_thousand_member_chord_fires_once(kit: Kit) -> None:
    r = await chord([kit.add.si(i, 1) for i in range(1000)], kit.tsum.s()).send()
    assert await r.get(timeout=60) == sum(range(1, 1001))
    await kit.drained(1001)
    assert kit.seen["tsum"] == 1


async def test_errors_in_each_position(kit: Kit) -> None:
    add, fail, record = kit.add, kit.fail, kit.record
    # a failing middle step fails the rest of the chain; the chain's errback runs once
    c = add.s(1, 1) | fail.s() | add.s(5)
    c.link_error(record.s("chain-err"))
    r = await c.send()
    with pytest.raises(Boom):
        await r.get(timeout=10)
    # a failing header fails the chord: the body never runs, its result is the error
    body = kit.tsum.s()
    body.link_error(record.si("chord-err"))
    r = await chord([add.s(1, 1), fail.s(), add.s(2, 2)], body).send()
    with pytest.raises(Boom):
        await r.get(timeout=10)
    # link_error deep inside a group of chains
    inner = fail.s()
    inner.link_error(record.s("deep-err"))
    gr = await group(add.s(1, 1), add.s(1, 1) | inner).send()
    with pytest.raises(Boom):
        await gr.get(timeout=10)
    # links on success
    head = add.s(2, 2)
    head.link(record.s("linked"))
    assert await (await head.send()).get(timeout=10) == 4
    for _ in range(100):
        if (
            kit.seen["record:('chord-err',)"]
            and kit.seen["record:(4, 'linked')"]
            and sum(v for k, v in kit.seen.items() if "deep-err" in k)
            and sum(v for k, v in kit.seen.items() if "chain-err" in k)
        ):
            break
        await asyncio.sleep(0.05)
    assert kit.seen["tsum"] == 0
    assert kit.seen["record:('chord-err',)"] == 1
    assert kit.seen["record:(4, 'linked')"] == 1
    assert sum(v for k, v in kit.seen.items() if "chain-err" in k) == 1
    assert sum(v for k, v in kit.seen.items() if "deep-err" in k) == 1


async def test_duplicate_header_deliveries_fire_the_body_once(kit: Kit) -> None:
    """Publish every header message twice (as a redelivery would): the body still runs once."""
    app = kit.app
    from aiotask.canvas.compile import compile_step, freeze

    step = freeze(chord([kit.add.si(i, i) for i in range(20)], kit.tsum.s()))
    plan = compile_step(step, app.message_factory)
    backend = await app.result_backend()
    for g in plan.groups:
        await backend.open_group(g.group_id, g.size, g.body, 600)
    doubled: list[Message] = [m for m in plan.messages for _ in range(2)]
    await app.broker.publish([Outgoing(m.queue, encode(m), m.id) for m in doubled])
    body_id = step["body"]["id"]
    assert await app.AsyncResult(body_id).get(timeout=20) == sum(2 * i for i in range(20))
    await kit.drained(41)
    assert kit.seen["tsum"] == 1


async def test_a_republished_chord_body_that_already_ran_is_skipped(kit: Kit) -> None:
    """The copy a redelivered header publishes when its chord was decided but not marked sent
    (its first worker died in between) does not run the body a second time."""
    r = await chord([kit.add.si(i, i) for i in range(3)], kit.tsum.s()).send()
    assert await r.get(timeout=10) == 6
    copy = kit.app.message_factory("c.tsum", [[0, 2, 4]], {}, {}, r.id)
    copy = copy.evolve(headers={CHORD_BODY_HEADER: "g"})
    await kit.app.broker.publish([Outgoing(copy.queue, encode(copy), copy.id)])
    await kit.drained(5)
    assert kit.seen["tsum"] == 1


async def test_long_chain_runs_with_its_remainder_stored_once(kit: Kit) -> None:
    steps = [kit.add.s(1)] + [kit.add.s(1) for _ in range(149)]
    r = await chain(*steps).send(0)
    assert await r.get(timeout=60) == 150
    broken = [kit.add.s(1) for _ in range(100)]
    broken[50] = kit.fail.s()
    r = await chain(*broken).send(0)
    with pytest.raises(Boom):
        await r.get(timeout=60)  # the last step's result is the failure, not a hang
