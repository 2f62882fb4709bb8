"""FastAPI: the App connects in the lifespan and reaches endpoints through a dependency.

    aiotask worker -A examples.web_tasks:app &
    uvicorn examples.fastapi_app:api

`async def` endpoints await the async API on uvicorn's event loop (the sync API there would
block the loop: it raises SyncCallInEventLoop). A plain `def` endpoint runs in FastAPI's
thread pool, where the sync API is the right one.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI

from aiotask import App
from aiotask.exceptions import ResultTimeout
from examples.web_tasks import add
from examples.web_tasks import app as tasks_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with tasks_app:  # connect at startup (a bad URL fails here), close at shutdown
        yield


api = FastAPI(lifespan=lifespan)


async def get_tasks_app() -> AsyncIterator[App]:
    """The dependency: endpoints get the App as a parameter (and tests may override it)."""
    yield tasks_app


TasksApp = Annotated[App, Depends(get_tasks_app)]


@api.post("/add", status_code=202)
async def send_add(x: int, y: int, aiotask: TasksApp) -> dict[str, str]:
    r = await aiotask.send_task("examples.add", args=(x, y))
    return {"id": r.id}


@api.get("/results/{task_id}")
async def result(task_id: str, aiotask: TasksApp, wait: float = 0) -> dict[str, Any]:
    r = aiotask.AsyncResult(task_id)
    if wait:
        with contextlib.suppress(ResultTimeout):
            return {"id": task_id, "state": "SUCCESS", "result": await r.get(timeout=wait)}
    return {"id": task_id, "state": await r.state()}


@api.post("/add-from-a-thread", status_code=202)
def send_add_from_a_thread(x: int, y: int) -> dict[str, str]:
    """A plain `def` endpoint runs in a worker thread: the sync API works there."""
    return {"id": add.delay(x, y).id}
