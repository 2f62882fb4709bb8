"""The pytest plugin's fixtures, used the way a user's test suite would use them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiotask import App
    from aiotask.worker import Worker


async def test_plugin_fixtures_give_a_working_app_and_worker(
    aiotask_app: App, aiotask_worker: Worker
) -> None:
    @aiotask_app.task
    async def double(x: int) -> int:
        return 2 * x

    assert aiotask_worker.ready.is_set()
    assert await (await double.send(21)).get(timeout=5) == 42
