"""The result-backend contract (aiotask/backends/base.py), run on every backend."""

from __future__ import annotations

import asyncio

import pytest

from aiotask.backends import EncodedResult, ResultBackend, ResultRecord
from aiotask.exceptions import ResultTimeout
from aiotask.serializer import ExceptionInfo
from aiotask.states import FAILURE, RETRY, SUCCESS


def rec(
    task_id: str, state: str = SUCCESS, result: object = None, ttl: float = 60
) -> EncodedResult:
    exc = ExceptionInfo("builtins.ValueError", "bad", "tb") if state == FAILURE else None
    return EncodedResult.of(ResultRecord(task_id, state, result, exc, task="t.add"), ttl)


async def test_store_and_get(backend: ResultBackend, namespace: str) -> None:
    await backend.store(
        [rec(f"{namespace}-a", result={"x": [1, 2]}), rec(f"{namespace}-b", FAILURE)]
    )
    a = await backend.get(f"{namespace}-a")
    b = await backend.get(f"{namespace}-b")
    assert a is not None and a.state == SUCCESS and a.result == {"x": [1, 2]}
    assert b is not None and b.exception is not None and b.exception.type_name == "ValueError"
    assert await backend.get(f"{namespace}-missing") is None


async def test_first_final_writer_wins(backend: ResultBackend, namespace: str) -> None:
    tid = f"{namespace}-x"
    await backend.store([rec(tid, RETRY)])
    await backend.store([rec(tid, SUCCESS, 1)])
    await backend.store([rec(tid, FAILURE)])
    await backend.store([rec(tid, RETRY)])
    got = await backend.get(tid)
    assert got is not None and (got.state, got.result) == (SUCCESS, 1)


async def test_one_batch_with_an_id_twice_is_stored_in_order(
    backend: ResultBackend, namespace: str
) -> None:
    """A batch is stored as if record by record (a redelivered task settled twice at once)."""
    a, b = f"{namespace}-a", f"{namespace}-b"
    batch = [rec(a, RETRY), rec(b, "PROGRESS", 1), rec(a, SUCCESS, 1), rec(b, "PROGRESS", 2)]
    await backend.store([*batch, rec(a, FAILURE), rec(a, RETRY)])
    got_a, got_b = await backend.get_many([a, b])
    assert got_a is not None and (got_a.state, got_a.result) == (SUCCESS, 1)
    assert got_b is not None and got_b.result == 2


async def test_progress_states_overwrite(backend: ResultBackend, namespace: str) -> None:
    tid = f"{namespace}-p"
    await backend.store([rec(tid, "PROGRESS", {"done": 1})])
    await backend.store([rec(tid, "PROGRESS", {"done": 2})])
    got = await backend.get(tid)
    assert got is not None and got.result == {"done": 2}


async def test_wait_is_woken_by_store(backend: ResultBackend, namespace: str) -> None:
    tid = f"{namespace}-w"

    async def later() -> None:
        await asyncio.sleep(0.2)
        await backend.store([rec(tid, RETRY)])
        await backend.store([rec(tid, SUCCESS, 42)])

    task = asyncio.create_task(later())
    got = await backend.wait(tid, timeout=5)
    assert got.result == 42
    await task


async def test_wait_is_woken_by_large_and_small_results(
    backend: ResultBackend, namespace: str
) -> None:
    """PostgreSQL sends a small result inside its NOTIFY and only the id of a large one (the
    waiter reads it); a task id may hold spaces. Every backend must hand both over."""
    small, large = f"{namespace} small id", f"{namespace}-large"
    waits = [asyncio.create_task(backend.wait(t, timeout=5)) for t in (small, large)]
    await asyncio.sleep(0.2)
    await backend.store([rec(small, SUCCESS, "x" * 100), rec(large, SUCCESS, "y" * 20_000)])
    got = await asyncio.gather(*waits)
    assert [r.result for r in got] == ["x" * 100, "y" * 20_000]


async def test_wait_sees_a_record_stored_before(backend: ResultBackend, namespace: str) -> None:
    tid = f"{namespace}-early"
    await backend.store([rec(tid, SUCCESS, "early")])
    assert (await backend.wait(tid, timeout=1)).result == "early"


async def test_many_concurrent_waits(backend: ResultBackend, namespace: str) -> None:
    ids = [f"{namespace}-{i}" for i in range(200)]
    waits = [asyncio.create_task(backend.wait(t, timeout=10)) for t in ids]
    await asyncio.sleep(0.1)
    await backend.store([rec(t, SUCCESS, i) for i, t in enumerate(ids)])
    results = await asyncio.gather(*waits)
    assert [r.result for r in results] == list(range(200))


async def test_wait_timeout(backend: ResultBackend, namespace: str) -> None:
    with pytest.raises(ResultTimeout):
        await backend.wait(f"{namespace}-never", timeout=0.3)


async def test_records_expire(backend: ResultBackend, namespace: str) -> None:
    tid = f"{namespace}-ttl"
    await backend.store([rec(tid, SUCCESS, 1, ttl=1)])
    assert await backend.get(tid) is not None
    await asyncio.sleep(1.6)
    assert await backend.get(tid) is None


async def test_forget_and_get_many(backend: ResultBackend, namespace: str) -> None:
    ids = [f"{namespace}-{i}" for i in range(3)]
    await backend.store([rec(t, SUCCESS, i) for i, t in enumerate(ids)])
    await backend.forget([ids[1]])
    got = await backend.get_many([*ids, f"{namespace}-none"])
    assert [g.result if g else None for g in got] == [0, None, 2, None]


async def test_group_fires_once_in_order(backend: ResultBackend, namespace: str) -> None:
    gid = f"{namespace}-g"
    await backend.open_group(gid, 3, b"body", ttl=60)
    p = await backend.add_to_group(gid, 2, rec(f"{gid}-2", SUCCESS, "c"))
    assert (p.done, p.fire) == (1, False)
    p = await backend.add_to_group(gid, 2, rec(f"{gid}-2", SUCCESS, "c"))  # duplicate
    assert (p.done, p.fire) == (1, False)
    await backend.add_to_group(gid, 0, rec(f"{gid}-0", SUCCESS, "a"))
    p = await backend.add_to_group(gid, 1, rec(f"{gid}-1", SUCCESS, "b"))
    assert p.fire and p.body == b"body"
    assert [r.result for r in p.records] == ["a", "b", "c"]
    again = await backend.add_to_group(gid, 1, rec(f"{gid}-1", SUCCESS, "b"))
    assert not again.fire


async def test_group_concurrent_reports_fire_exactly_once(
    backend: ResultBackend, namespace: str
) -> None:
    gid = f"{namespace}-gc"
    await backend.open_group(gid, 50, None, ttl=60)
    reports = [backend.add_to_group(gid, i, rec(f"{gid}-{i}", SUCCESS, i)) for i in range(50)]
    dupes = [backend.add_to_group(gid, i, rec(f"{gid}-{i}", SUCCESS, i)) for i in range(50)]
    progress = await asyncio.gather(*reports, *dupes)
    assert sum(p.fire for p in progress) == 1


async def test_group_first_failure_once(backend: ResultBackend, namespace: str) -> None:
    gid = f"{namespace}-gf"
    await backend.open_group(gid, 3, b"body", ttl=60)
    await backend.add_to_group(gid, 0, rec(f"{gid}-0", SUCCESS, 1))
    p1 = await backend.add_to_group(gid, 1, rec(f"{gid}-1", FAILURE))
    p2 = await backend.add_to_group(gid, 2, rec(f"{gid}-2", FAILURE))
    assert p1.first_failure and p1.body == b"body"
    assert not p2.first_failure and not p2.fire


async def test_revoke_tombstones(backend: ResultBackend, namespace: str) -> None:
    a, b = f"{namespace}-ra", f"{namespace}-rb"
    await backend.revoke([a], ttl=60)
    live = await backend.revocations()
    assert a in live
    assert b not in live


async def test_broadcast_reaches_every_listener(backend: ResultBackend) -> None:
    async def first(n: int) -> bytes:
        async for payload in backend.control():
            if n == 0:
                return payload
            n -= 1
        raise AssertionError("control() ended")

    listeners = [asyncio.create_task(first(0)) for _ in range(2)]
    async with asyncio.timeout(5):
        while not all(t.done() for t in listeners):
            await backend.broadcast(b'{"op": "ping"}')
            await asyncio.sleep(0.05)
    assert [t.result() for t in listeners] == [b'{"op": "ping"}'] * 2


async def test_revocations_lists_live_tombstones(backend: ResultBackend, namespace: str) -> None:
    a, b = f"{namespace}-la", f"{namespace}-lb"
    await backend.revoke([a], ttl=60)
    await backend.revoke([b], ttl=1)
    assert {a, b} <= await backend.revocations()
    await asyncio.sleep(1.2)
    live = await backend.revocations()
    assert a in live
    assert b not in live
