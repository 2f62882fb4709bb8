"""The beat store contract (aiotask/beat/store.py) on memory, SQLite, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from aiotask._sqlite import Connection
from aiotask.backends._schedule_redis import RedisScheduleStore
from aiotask.backends._schedule_sqlite import SQLiteScheduleStore
from aiotask.beat.store import Claim, MemoryScheduleStore, ScheduleStore
from aiotask.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from aiotask.backends.base import ResultBackend

Factory = Callable[[], ScheduleStore]


class Stores:
    """Stores on one shared store: each `make()` is another beat process, in effect."""

    def __init__(self, kind: str, path: str, server_url: str, namespace: str) -> None:
        self.kind, self.path, self.server_url, self.namespace = kind, path, server_url, namespace
        self.memory = MemoryScheduleStore()
        self.conns: list[Connection] = []
        self.clients: list[Redis] = []
        self.keys: list[str] = []
        self.backends: list[ResultBackend] = []

    def make(self) -> ScheduleStore:
        if self.kind == "memory":
            return self.memory
        if self.kind == "sqlite":
            conn = Connection(self.path, "")
            self.conns.append(conn)
            return SQLiteScheduleStore(conn, "app")
        if self.kind == "postgres":
            from aiotask.backends.postgres import PostgresBackend

            backend = PostgresBackend(self.server_url, Settings(key_prefix=self.namespace))
            self.backends.append(backend)
            return backend.schedule_store("app")
        client = Redis.from_url(self.server_url)
        self.clients.append(client)
        store = RedisScheduleStore(lambda: client, self.namespace, "app")
        self.keys = store.keys
        return store

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()
        if self.clients and self.keys:
            await self.clients[0].delete(*self.keys)
        for client in self.clients:
            await client.aclose()
        for backend in self.backends:
            await backend.close()


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def stores(
    request: pytest.FixtureRequest, namespace: str, tmp_path: Path
) -> AsyncIterator[Factory]:
    servers = {"redis": "redis_url", "postgres": "postgres_url"}
    url = request.getfixturevalue(servers[request.param]) if request.param in servers else ""
    made = Stores(request.param, str(tmp_path / "beat.db"), url, namespace)
    try:
        yield made.make
    finally:
        await made.close()


async def test_entries_pauses_and_removal(stores: Factory) -> None:
    s = stores()
    assert await s.entries() == {}
    await s.put_entry("a", b'{"task": "t", "every": 1}')
    await s.put_entry("a", b'{"task": "t", "every": 2}')
    assert await s.entries() == {"a": b'{"task": "t", "every": 2}'}
    await s.set_paused("a", True)
    await s.set_paused("static-one", True)
    assert await s.paused() == {"a", "static-one"}
    assert await s.entries() == {"a": b'{"task": "t", "every": 2}'}  # pauses are not entries
    await s.set_paused("static-one", False)
    assert await s.paused() == {"a"}
    await s.claim([Claim("a", 1000, b"{}")])
    await s.settle([], [("a", "missed", 2)])
    assert await s.remove_entry("a") is True
    assert (await s.entries(), await s.paused()) == ({}, set())
    assert await s.states(["a"]) == {}
    assert await s.skip_counts(["a"]) == {}
    assert await s.remove_entry("a") is False


async def test_claims_move_the_watermark_only_from_where_it_was_read(stores: Factory) -> None:
    s = stores()
    assert await s.claim([Claim("e", 1000, b"i", init=True)]) == [True]
    assert await s.claim([Claim("e", 5000, b"x", init=True)]) == [False]  # never moves one
    won = await s.claim([Claim("e", 2000, b"s2", since_ms=1000), Claim("f", 10, b"f")])
    assert won == [True, True]  # "f" had no watermark, and the claim read none
    assert await s.claim([Claim("e", 2000, b"again", since_ms=1000)]) == [False]
    assert await s.claim([Claim("e", 1500, b"older", since_ms=1000)]) == [False]
    assert await s.claim([Claim("f", 20, b"f2")]) == [False]  # read none; it has one now
    states = await s.states(["e", "f", "never"])
    assert {n: (st.watermark_ms, st.state) for n, st in states.items()} == {
        "e": (2000, b"s2"),
        "f": (10, b"f"),
    }


async def test_a_claim_planned_from_a_stale_watermark_loses(stores: Factory) -> None:
    """Two beats read watermark 1000; one claims through 3000 (slots 2000 and 3000); the other,
    whose clock runs ahead, then claims through 4000 from 1000. It must lose: winning, it would
    send 2000 and 3000 again (a CI run saw exactly that: two slots ran twice)."""
    a, b = stores(), stores()
    await a.claim([Claim("e", 1000, b"i", init=True)])
    assert (await a.states(["e"]))["e"].watermark_ms == (await b.states(["e"]))["e"].watermark_ms
    assert await b.claim([Claim("e", 3000, b"b", since_ms=1000)]) == [True]
    assert await a.claim([Claim("e", 4000, b"a", since_ms=1000)]) == [False]
    assert await a.claim([Claim("e", 4000, b"a", since_ms=3000)]) == [True]  # after a re-read
    [st] = (await a.states(["e"])).values()
    assert (st.watermark_ms, st.state) == (4000, b"a")


async def test_expect_claims_take_over_a_state_once(stores: Factory) -> None:
    s = stores()
    await s.claim([Claim("e", 2000, b"pending")])
    take = Claim("e", 2000, b"mine", expect=b"pending")
    assert await s.claim([take]) == [True]
    assert await s.claim([Claim("e", 2000, b"theirs", expect=b"pending")]) == [False]
    [st] = (await s.states(["e"])).values()
    assert (st.watermark_ms, st.state) == (2000, b"mine")


async def test_confirms_only_land_on_their_own_claim(stores: Factory) -> None:
    s = stores()
    await s.claim([Claim("e", 2000, b"pending")])
    await s.settle([("e", 2000, b"done")], [("e", "overlap", 1), ("e", "overlap", 2)])
    await s.claim([Claim("e", 3000, b"pending-3", since_ms=2000)])
    await s.settle([("e", 2000, b"late confirm of 2000")], [("e", "expired", 1)])
    [st] = (await s.states(["e"])).values()
    assert (st.watermark_ms, st.state) == (3000, b"pending-3")
    assert await s.skip_counts(["e", "x"]) == {"e": {"overlap": 3, "expired": 1}}


async def test_racing_beats_win_each_slot_once(stores: Factory) -> None:
    """Each beat read the same watermark and plans a different `through` (their clocks
    differ by a few ms): one wins, however the claims interleave."""
    beats = [stores() for _ in range(4)]
    wins = 0
    since: int | None = None
    for slot in range(1, 21):
        results = await asyncio.gather(
            *(
                b.claim([Claim("e", slot * 1000 + i, b"%d" % i, since_ms=since)])
                for i, b in enumerate(beats)
            )
        )
        wins_here = sum(r[0] for r in results)
        assert wins_here == 1, f"slot {slot} won {wins_here} times"
        wins += wins_here
        since = (await beats[0].states(["e"]))["e"].watermark_ms
    assert wins == 20
