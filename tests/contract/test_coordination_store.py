"""The coordination store contract (aiotask/coordination/store.py) on memory, SQLite, Redis and
PostgreSQL: several connections (workers, in effect) race for rate reservations and slots."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from tests.contract.conftest import BACKENDS, make_backend

if TYPE_CHECKING:
    from aiotask.backends.base import ResultBackend
    from aiotask.coordination.store import CoordinationStore


async def _stores(backend: ResultBackend, kind: str, request: pytest.FixtureRequest, ns: str,
                  n: int) -> tuple[list[CoordinationStore], list[ResultBackend]]:  # fmt: skip
    """`n` stores of one app: the fixture's backend, plus more connections where they exist."""
    extra = (
        [] if kind == "memory" else [await make_backend(kind, request, ns) for _ in range(n - 1)]
    )
    backends = [backend, *extra] if extra else [backend] * n
    return [b.coordination_store("app") for b in backends], extra


#: every backend has the lock and coordination stores
STORE_BACKENDS = BACKENDS


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["backend"])


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_racing_rate_requests_book_distinct_spaced_starts(
    backend: ResultBackend, kind: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    stores, extra = await _stores(backend, kind, request, namespace, 3)
    interval, ahead = 0.05, 0.5
    try:
        began = time.monotonic()
        grants = await asyncio.gather(
            *(stores[i % 3].take_rate("k", interval, 1, ahead) for i in range(40))
        )
        elapsed = time.monotonic() - began
    finally:
        for b in extra:
            await b.close()
    booked = [g for g in grants if g.granted]
    refused = [g for g in grants if not g.granted]
    # at most the horizon's worth (plus what time passing freed), never more
    assert ahead / interval <= len(booked) <= (ahead + elapsed) / interval + 1
    assert refused and all(g.wait > 0 for g in refused)
    # no two bookings share a start: the i-th earliest is at least i intervals after the
    # first request (less the time the requests took to arrive)
    for i, wait in enumerate(sorted(g.wait for g in booked)):
        assert wait + elapsed >= i * interval - 1e-3, (i, wait, elapsed)


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_rate_keys_have_separate_budgets(backend: ResultBackend) -> None:
    store = backend.coordination_store("app")
    first = [await store.take_rate(key, 10.0, 1, 0.0) for key in ("a", "b", "a")]
    assert [g.granted for g in first] == [True, True, False]


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_racing_slot_requests_get_exactly_the_limit(
    backend: ResultBackend, kind: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    stores, extra = await _stores(backend, kind, request, namespace, 3)
    try:
        got = await asyncio.gather(
            *(stores[i % 3].acquire_slot("c", 4, f"tok{i}", 30.0) for i in range(30))
        )
        assert sum(got) == 4
        holders = [f"tok{i}" for i, ok in enumerate(got) if ok]
        assert await stores[1].slots_in_use("c") == 4
        assert not await stores[2].acquire_slot("c", 4, "late", 30.0)
        assert await stores[0].acquire_slot("c", 4, holders[0], 30.0)  # a holder again: same slot
        await stores[0].release_slots([("c", holders[0]), ("c", "never-held")])
        assert await stores[2].acquire_slot("c", 4, "late", 30.0)
        assert await stores[1].acquire_slot("other", 1, "x", 30.0)  # keys are independent
        await stores[0].release_slots([("c", t) for t in [*holders, "late"]] + [("other", "x")])
        assert await stores[0].slots_in_use("c") == 0
    finally:
        for b in extra:
            await b.close()


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_unrenewed_slots_lapse_and_renewed_ones_stay(backend: ResultBackend) -> None:
    store = backend.coordination_store("app")
    assert await store.acquire_slot("s", 2, "dies", 0.4)
    assert await store.acquire_slot("s", 2, "lives", 0.4)
    assert not await store.acquire_slot("s", 2, "waits", 0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await store.renew_slots([("s", "lives")], 0.4) == [True]
    # "dies" was not renewed (a worker killed -9): its slot is free, "lives" still holds one
    assert await store.renew_slots([("s", "dies")], 0.4) == [False]
    assert await store.slots_in_use("s") == 1
    assert await store.acquire_slot("s", 2, "waits", 0.4)
    assert not await store.acquire_slot("s", 2, "third", 0.4)
    await store.release_slots([("s", "lives"), ("s", "waits")])
