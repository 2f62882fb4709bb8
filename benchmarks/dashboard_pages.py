"""Render time of the dashboard's pages with 1,000 and with 100,000 tasks in its stored
history, and 50 workers in the registry, per result backend (the history's store).

    python -m benchmarks.dashboard_pages                       # sqlite and redis, ~2 min
    python -m benchmarks.dashboard_pages --backends sqlite --repeats 5

The history is written the way the dashboard writes it (events folded in batches, one store
call per batch; the write rate is reported too). Each page is requested through the ASGI app
(httpx's in-memory transport: no network), the median of `--repeats` renders is kept, and the
figure is the ratio of the medians at 100,000 and 1,000 tasks: how a page's cost grows with
the history. Pages are 50 rows; SQLite answers filters from indexes (a text search scans the
table), Redis answers state and time filters from sorted sets and scans for text, name or
worker. Absolute times depend on the machine. The Redis run uses a unique key prefix on
AIOTASK_BENCH_REDIS (default redis://127.0.0.1:6379/0) and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid

import httpx

from aiotask import App
from aiotask.control import WorkerInfo
from aiotask.dashboard import Auth, create_app
from aiotask.events import EventType, TaskEvent
from benchmarks.harness import cleanup_redis

WORKERS = 50
SIZES = (1_000, 100_000)
REDIS = os.environ.get("AIOTASK_BENCH_REDIS", "redis://127.0.0.1:6379/0")
BATCH = 2_000


def pages(first_id: str) -> list[tuple[str, str]]:
    return [
        ("overview", "/"),
        ("tasks, first page", "/tasks"),
        ("tasks, page 1000", "/tasks?offset=50000"),
        ("tasks, state=FAILURE", "/tasks?state=FAILURE"),
        ("tasks, search by id", f"/tasks?q={first_id[:8]}"),
        ("tasks, error text", "/tasks?q=disk+full+7"),
        ("tasks, worker", "/tasks?worker=worker-7"),
        ("tasks, last 15 min", "/tasks?within=15m"),
        ("a task", f"/tasks/{first_id}"),
        ("a workflow (10 tasks)", "/canvas/00000000-task"),
        ("API history, 50", "/api/history?limit=50"),
    ]


def events_of(i: int, now: float) -> list[TaskEvent]:
    task_id = f"{i:08x}-task"
    worker = f"worker-{i % WORKERS}"
    root = "00000000-task" if 0 < i < 10 else None
    sent = TaskEvent(
        EventType.TASK_SENT,
        now,
        "p",
        task_id,
        "b.t",
        "default",
        args=f"[{i}]",
        kwargs="{}",
        root_id=root,
        parent_id=f"{i - 1:08x}-task" if root else None,
    )
    started = TaskEvent(EventType.TASK_STARTED, now, worker, task_id, "b.t", "default")
    if i % 10 == 0:
        end = TaskEvent(
            EventType.TASK_FAILED,
            now,
            worker,
            task_id,
            "b.t",
            "default",
            runtime=0.01,
            exception_type="OSError",
            exception=f"disk full {i % 100}",
        )
    else:
        end = TaskEvent(EventType.TASK_SUCCEEDED, now, worker, task_id, "b.t", "default", 0.01)
    return [sent, started, end]


async def fill(app: App, web: object, n: int) -> tuple[str, float]:
    """Register the workers and write the history; the first id and the rows written/s."""
    backend = await app.result_backend()
    now = time.time()
    for i in range(WORKERS):
        info = WorkerInfo(
            f"worker-{i}", "host", 1000 + i, ("default",), 100, 2, "0", now, now, 60.0
        )
        await backend.register_worker(info.name, info.encode(), 600)
    history = web.state.dashboard.history  # type: ignore[attr-defined]
    store = await history.store(app)
    start = time.perf_counter()
    for low in range(0, n, BATCH):
        batch = [e for i in range(low, min(low + BATCH, n)) for e in events_of(i, now)]
        await history.fold(store, batch)
    return "00000000-task", n / (time.perf_counter() - start)


def backend_url(kind: str, directory: str, n: int) -> str:
    if kind == "sqlite":
        return f"sqlite:///{directory}/bench-{n}.db"
    return REDIS if kind == "redis" else "memory://"


async def measure(kind: str, n: int, repeats: int) -> tuple[dict[str, float], float]:
    prefix = f"bench{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as directory:
        url = backend_url(kind, directory, n)
        app = App("bench", broker="memory://", backend=url, key_prefix=prefix)
        web = create_app(app, auth=Auth())
        out: dict[str, float] = {}
        async with app:
            try:
                first, rate = await fill(app, web, n)
                transport = httpx.ASGITransport(app=web)
                async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                    for name, path in pages(first):
                        times = []
                        for _ in range(repeats):
                            begin = time.perf_counter()
                            r = await client.get(path)
                            times.append(time.perf_counter() - begin)
                            assert r.status_code == 200, (path, r.status_code)
                        out[name] = statistics.median(times)
            finally:
                await web.state.dashboard.close()
                if kind == "redis":
                    await cleanup_redis(REDIS, prefix)
    return out, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--backends", default="sqlite,redis", help="sqlite, redis, memory")
    args = parser.parse_args()
    for kind in args.backends.split(","):
        (small, rate_small), (large, rate_large) = (
            asyncio.run(measure(kind, n, args.repeats)) for n in SIZES
        )
        print(f"\n{kind}: history written at {rate_small:,.0f} / {rate_large:,.0f} tasks/s")
        print(f"{'page':<24} {'1k tasks':>10} {'100k tasks':>11} {'ratio':>7}")
        for name in small:
            ratio = large[name] / small[name]
            print(
                f"{name:<24} {small[name] * 1000:>8.1f}ms {large[name] * 1000:>9.1f}ms "
                f"{ratio:>7.2f}"
            )


if __name__ == "__main__":
    main()
