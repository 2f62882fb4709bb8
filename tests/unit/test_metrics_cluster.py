"""The cluster exporter's arithmetic: events and queue counts in, Prometheus samples out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiotask.metrics.cluster import ClusterMetrics, feed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: ClusterMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@dataclass(frozen=True)
class Stats:
    queue: str
    ready: int
    delayed: int | None
    in_flight: int | None
    dead: int


@dataclass(frozen=True)
class WorkerEvent:  # an object with attributes, like aiotask.events' dataclasses
    type: str
    hostname: str
    timestamp: float
    active: int = 0
    freq: float | None = None


def task(kind: str, name: str = "p.add", runtime: float | None = None) -> dict[str, object]:
    event: dict[str, object] = {"type": kind, "task": name, "queue": "q", "task_id": "x"}
    if runtime is not None:
        event["runtime"] = runtime
    return event


def test_task_events_count_by_state_with_runtimes() -> None:
    m = ClusterMetrics()
    for event in [
        task("task-sent"),
        task("task-received"),
        task("task-started"),
        task("task-succeeded", runtime=0.002),
        task("task-failed", runtime=2.0),
        task("task-succeeded", name="p.other", runtime=0.5),
        {"type": "something-new"},  # a newer emitter's type: ignored
    ]:
        m.observe(event)
    got = samples(m)

    def count(name: str, state: str) -> float:
        labels = (("queue", "q"), ("state", state), ("task", name))
        return got.get(("aiotask_cluster_tasks_total", labels), 0.0)

    assert count("p.add", "sent") == 1
    assert count("p.add", "succeeded") == 1
    assert count("p.add", "failed") == 1
    assert count("p.other", "succeeded") == 1
    runtime = "aiotask_cluster_task_duration_seconds"
    labels = (("queue", "q"), ("task", "p.add"))
    assert got[(f"{runtime}_count", labels)] == 2
    assert got[(f"{runtime}_sum", labels)] == pytest.approx(2.002)
    le_01 = tuple(sorted((*labels, ("le", "0.01"))))
    assert got[(f"{runtime}_bucket", le_01)] == 1


def test_queue_counts_replace_the_gauges_and_unknowns_are_left_out() -> None:
    m = ClusterMetrics()
    m.set_queues([Stats("a", 5, 2, 1, 3), Stats("b", 0, None, None, 0)])
    got = samples(m)
    assert got[("aiotask_queue_depth", (("queue", "a"),))] == 5
    assert got[("aiotask_queue_delayed", (("queue", "a"),))] == 2
    assert got[("aiotask_queue_in_flight", (("queue", "a"),))] == 1
    assert got[("aiotask_queue_dead_letters", (("queue", "a"),))] == 3
    assert got[("aiotask_queue_depth", (("queue", "b"),))] == 0
    assert ("aiotask_queue_delayed", (("queue", "b"),)) not in got  # cannot tell: no sample
    m.set_queues([Stats("b", 7, 0, 0, 0)])
    got = samples(m)
    assert ("aiotask_queue_depth", (("queue", "a"),)) not in got
    assert got[("aiotask_queue_depth", (("queue", "b"),))] == 7


def test_workers_online_from_heartbeats() -> None:
    m = ClusterMetrics()
    now = time.time()
    m.observe(WorkerEvent("worker-online", "w1", now, active=0, freq=2.0))
    m.observe(WorkerEvent("worker-heartbeat", "w1", now, active=4, freq=2.0))
    m.observe(WorkerEvent("worker-heartbeat", "w2", now - 60, active=1, freq=2.0))  # lost
    m.observe(WorkerEvent("worker-online", "w3", now, freq=2.0))
    m.observe(WorkerEvent("worker-offline", "w3", now, freq=2.0))
    got = samples(m)
    assert got[("aiotask_workers_online", ())] == 1
    assert got[("aiotask_worker_active_tasks", (("worker", "w1"),))] == 4
    assert ("aiotask_worker_active_tasks", (("worker", "w2"),)) not in got


async def test_feed_counts_events_and_polls_queues() -> None:
    m = ClusterMetrics()
    polled = asyncio.Event()
    calls = 0

    async def events() -> AsyncIterator[object]:
        yield task("task-succeeded", runtime=0.1)
        yield task("task-succeeded", runtime=0.1)
        await asyncio.Event().wait()  # a live stream: nothing more for now

    async def counts() -> list[Stats]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker down")  # logged, tried again
        polled.set()
        return [Stats("q", 9, 0, 0, 0)]

    runner = asyncio.create_task(feed(m, events(), counts, interval=0.01))
    await asyncio.wait_for(polled.wait(), 5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    got = samples(m)
    labels = (("queue", "q"), ("state", "succeeded"), ("task", "p.add"))
    assert got[("aiotask_cluster_tasks_total", labels)] == 2
    assert got[("aiotask_queue_depth", (("queue", "q"),))] == 9
