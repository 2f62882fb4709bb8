"""Render time of the dashboard's pages with 1,000 and with 100,000 tasks in its history,
and 50 workers in the registry (in one process, memory:// broker and backend).

    python -m benchmarks.dashboard_pages               # ~20 s
    python -m benchmarks.dashboard_pages --repeats 5

Each page is requested through the ASGI app (httpx's in-memory transport: no network), the
median of `--repeats` renders is kept, and the figure is the ratio of the medians at 100,000
and 1,000 tasks: how a page's cost grows with the history (pagination keeps the rows per page
at 50; search and state filters scan the history). Absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from aiotask import App
from aiotask.control import WorkerInfo
from aiotask.dashboard import Auth, create_app
from aiotask.events import EventType, TaskEvent

WORKERS = 50
SIZES = (1_000, 100_000)


def pages(first_id: str) -> list[tuple[str, str]]:
    return [
        ("overview", "/"),
        ("tasks, first page", "/tasks"),
        ("tasks, page 1000", "/tasks?offset=50000"),
        ("tasks, state=FAILURE", "/tasks?state=FAILURE"),
        ("tasks, search by id", f"/tasks?q={first_id[:8]}"),
        ("a task", f"/tasks/{first_id}"),
        ("API history, 50", "/api/history?limit=50"),
    ]


async def fill(app: App, web: object, n: int) -> str:
    backend = await app.result_backend()
    now = time.time()
    for i in range(WORKERS):
        info = WorkerInfo(
            f"worker-{i}", "host", 1000 + i, ("default",), 100, 2, "0", now, now, 60.0
        )
        await backend.register_worker(info.name, info.encode(), 600)
    history = web.state.dashboard.history  # type: ignore[attr-defined]
    first = ""
    for i in range(n):
        task_id = f"{i:08x}-task"
        first = first or task_id
        outcome = EventType.TASK_FAILED if i % 10 == 0 else EventType.TASK_SUCCEEDED
        for kind in (EventType.TASK_SENT, EventType.TASK_STARTED, outcome):
            history.apply(TaskEvent(kind, now, f"worker-{i % WORKERS}", task_id, "b.t", "default"))
    return first


async def measure(n: int, repeats: int) -> dict[str, float]:
    app = App("bench", broker="memory://", backend="memory://")
    web = create_app(app, auth=Auth(), history_size=n)
    out: dict[str, float] = {}
    async with app:
        first = await fill(app, web, n)
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            for name, path in pages(first):
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    r = await client.get(path)
                    times.append(time.perf_counter() - start)
                    assert r.status_code == 200, (path, r.status_code)
                out[name] = statistics.median(times)
        await web.state.dashboard.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    small, large = (asyncio.run(measure(n, args.repeats)) for n in SIZES)
    print(f"{'page':<24} {'1k tasks':>10} {'100k tasks':>11} {'ratio':>7}")
    for name in small:
        ratio = large[name] / small[name]
        print(f"{name:<24} {small[name] * 1000:>8.1f}ms {large[name] * 1000:>9.1f}ms {ratio:>7.2f}")


if __name__ == "__main__":
    main()
