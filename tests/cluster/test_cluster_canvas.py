"""The canvas suite (chain, group, chord; tests/integration) with a worker over a Redis Cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
from tests.integration.test_canvas_e2e import (  # noqa: F401 - the suite runs here too
    Kit,
    make_kit,
    test_a_republished_chord_body_that_already_ran_is_skipped,
    test_a_thousand_member_chord_fires_once,
    test_contract_examples,
    test_duplicate_header_deliveries_fire_the_body_once,
    test_errors_in_each_position,
    test_long_chain_runs_with_its_remainder_stored_once,
    test_nesting,
)


@pytest.fixture(params=["redis"])
async def kit(request: pytest.FixtureRequest, namespace: str, tmp_path: Any) -> AsyncIterator[Kit]:
    k = make_kit(request.getfixturevalue("redis_url"), namespace)
    async with k.stack:
        k.worker = await k.stack.enter_async_context(start_worker(k.app, concurrency=50))
        yield k
