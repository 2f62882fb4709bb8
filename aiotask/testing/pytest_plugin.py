"""The `aiotask` pytest plugin: an in-memory app and a worker on the test's event loop.

Enabled automatically when aiotask is installed (entry point `pytest11: aiotask`).
Override `aiotask_app` in your conftest to test your own app (e.g. `App(..., broker="memory://")`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from aiotask.app import App
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiotask.worker import Worker


@pytest.fixture
def aiotask_namespace() -> str:
    """A unique prefix for keys and queues, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def aiotask_app(aiotask_namespace: str) -> App:
    """An App on memory:// (broker and results) with no server needed."""
    return App(f"test-{aiotask_namespace}", broker="memory://", backend="memory://")


@pytest.fixture
async def aiotask_worker(aiotask_app: App) -> AsyncIterator[Worker]:
    """A running worker for `aiotask_app`, shut down warm after the test."""
    async with start_worker(aiotask_app) as worker:
        yield worker
