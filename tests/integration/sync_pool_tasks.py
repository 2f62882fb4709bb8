"""Tasks for test_sync_api's pool test (importable, so pool children load them).

The App takes its broker from AIOTASK_BROKER_URL, which the test sets for the children; the
test points this process's copy at the same file through `app.conf`.
"""

from __future__ import annotations

from aiotask import App

app = App("syncpool")


@app.task(name="syncpool.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="syncpool.fan_out")
def fan_out(n: int) -> list[str]:
    """A plain function, run in a pool child (no event loop there): sends with delay()."""
    return [add.delay(i, i).id for i in range(n)]
