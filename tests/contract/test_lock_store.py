"""The unique/debounce lock store (coordination/unique.py `LockStore`) on every backend."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.contract.test_coordination_store import STORE_BACKENDS

if TYPE_CHECKING:
    from aiotask.backends import ResultBackend


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_acquire_answers_the_holder_until_released(backend: ResultBackend) -> None:
    store = backend.lock_store()
    assert await store.acquire("k", "a", 30) is None
    assert await store.acquire("k", "b", 30) == "a"
    assert await store.get("k") == "a"
    await store.release([("k", "b")])  # not the holder: nothing happens
    assert await store.get("k") == "a"
    await store.release([("k", "a")])
    assert await store.get("k") is None
    assert await store.acquire("k", "b", 30) is None


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_swap_only_from_the_expected_holder(backend: ResultBackend) -> None:
    store = backend.lock_store()
    assert not await store.swap("k", "a", "b", 30)  # nobody holds it
    assert await store.acquire("k", "a", 30) is None
    assert not await store.swap("k", "x", "b", 30)
    assert await store.swap("k", "a", "b", 30)
    assert await store.get("k") == "b"
    await store.release([("k", "b")])


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_put_overwrites_and_release_is_batched(backend: ResultBackend) -> None:
    store = backend.lock_store()
    await store.put("k", "a", 30)
    await store.put("k", "b", 30)
    assert await store.get("k") == "b"
    assert await store.acquire("j", "c", 30) is None
    await store.release([("k", "b"), ("j", "c"), ("missing", "z")])
    assert await store.get("k") is None
    assert await store.get("j") is None


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_a_lock_lapses_after_its_lifetime(backend: ResultBackend) -> None:
    store = backend.lock_store()
    assert await store.acquire("k", "a", 0.2) is None
    assert await store.acquire("k", "b", 30) == "a"
    await asyncio.sleep(0.4)
    assert await store.get("k") is None
    assert await store.acquire("k", "b", 30) is None
    await store.release([("k", "b")])


@pytest.mark.parametrize("backend", STORE_BACKENDS, indirect=True)
async def test_one_of_a_hundred_concurrent_acquires_wins(backend: ResultBackend) -> None:
    store = backend.lock_store()
    answers = await asyncio.gather(*(store.acquire("k", f"o{i}", 30) for i in range(100)))
    winners = [i for i, held in enumerate(answers) if held is None]
    assert len(winners) == 1
    holder = f"o{winners[0]}"
    assert {held for held in answers if held is not None} == {holder}
    await store.release([("k", holder)])
