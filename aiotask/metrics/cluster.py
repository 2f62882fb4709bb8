"""The cluster-level exporter: metrics about every worker and queue, from one process.

Fed by the monitoring events (task and worker events, `aiotask.events`) and by periodic queue
counts (`app.dead_letters.queue_stats()`); it serves them like a worker's metrics. It knows
nothing about where they come from: `feed()` takes an async iterator of events (objects with
attributes, or dicts with the same keys: the events' JSON form) and a coroutine function that
returns the queues' counts.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

# (importing aiotask.metrics first runs _worker, which names the extra when it is missing)
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from aiotask._log import get_logger
from aiotask.metrics._worker import DURATION_BUCKETS, _copy, _Histogram

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

    from prometheus_client.metrics_core import Metric

log = get_logger(__name__)

#: task event types -> the `state` label (the event type without "task-")
_TASK_PREFIX = "task-"
#: a worker whose last heartbeat is older than this many heartbeat intervals counts as lost
LOST_AFTER_BEATS = 3.0
DEFAULT_FREQ = 10.0


class QueueCounts(Protocol):
    """One queue's counts (`aiotask.brokers.base.QueueStats` has these fields)."""

    @property
    def queue(self) -> str: ...
    @property
    def ready(self) -> int: ...
    @property
    def delayed(self) -> int | None: ...
    @property
    def in_flight(self) -> int | None: ...
    @property
    def dead(self) -> int: ...


class _Worker:
    __slots__ = ("active", "freq", "online", "seen")

    def __init__(self) -> None:
        self.seen = 0.0
        self.freq = DEFAULT_FREQ
        self.active = 0
        self.online = True


class ClusterMetrics:
    """Counters from events, gauges from queue counts; `registry` to serve (metrics.serve)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tasks: dict[tuple[str, str, str], int] = {}
        self.runtimes: dict[tuple[str, str], _Histogram] = {}
        self.workers: dict[str, _Worker] = {}
        self.queues: dict[str, QueueCounts] = {}
        self.registry.register(_ClusterCollector(self))

    def observe(self, event: object) -> None:
        """Count one event (unknown types are ignored: a newer emitter)."""
        get = _getter(event)
        kind = str(get("type") or "")
        if kind.startswith(_TASK_PREFIX):
            key = (str(get("queue") or ""), str(get("task") or ""), kind[len(_TASK_PREFIX) :])
            self.tasks[key] = self.tasks.get(key, 0) + 1
            runtime = get("runtime")
            if isinstance(runtime, int | float):
                hist = self.runtimes.get(key[:2])
                if hist is None:
                    hist = self.runtimes[key[:2]] = _Histogram(DURATION_BUCKETS)
                hist.counts[bisect_left(DURATION_BUCKETS, runtime)] += 1
                hist.total += runtime
        elif kind.startswith("worker-"):
            self._worker(kind, get)

    def _worker(self, kind: str, get: Callable[[str], Any]) -> None:
        name = str(get("hostname") or "")
        worker = self.workers.get(name)
        if worker is None:
            worker = self.workers[name] = _Worker()
        stamp = get("timestamp")
        worker.seen = float(stamp) if isinstance(stamp, int | float) else time.time()
        freq = get("freq")
        if isinstance(freq, int | float) and freq > 0:
            worker.freq = float(freq)
        active = get("active")
        worker.active = int(active) if isinstance(active, int) else 0
        worker.online = kind != "worker-offline"

    def set_queues(self, counts: Iterable[QueueCounts]) -> None:
        """Replace the queue gauges with these counts."""
        self.queues = {c.queue: c for c in counts}

    def online(self, now: float | None = None) -> dict[str, _Worker]:
        """Workers that are online and whose last heartbeat is recent."""
        at = time.time() if now is None else now
        return {
            name: w
            for name, w in _copy(self.workers).items()
            if w.online and at - w.seen <= LOST_AFTER_BEATS * w.freq
        }


def _getter(event: object) -> Callable[[str], Any]:
    if isinstance(event, Mapping):
        return event.get
    return lambda name: getattr(event, name, None)


async def feed(
    metrics: ClusterMetrics,
    events: AsyncIterator[object],
    queue_counts: Callable[[], Awaitable[Iterable[QueueCounts]]],
    interval: float = 15.0,
) -> None:
    """Count events as they come and refresh the queue counts every `interval` seconds, until
    cancelled; a failing count is logged and tried again at the next interval."""

    async def count_events() -> None:
        async for event in events:
            metrics.observe(event)

    async def poll_queues() -> None:
        while True:
            try:
                metrics.set_queues(await queue_counts())
            except Exception as exc:
                log.warning("cannot count the queues (retrying in %gs): %s", interval, exc)
            await asyncio.sleep(interval)

    async with asyncio.TaskGroup() as group:
        group.create_task(count_events(), name="aiotask-exporter-events")
        group.create_task(poll_queues(), name="aiotask-exporter-queues")


class _ClusterCollector:
    def __init__(self, metrics: ClusterMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        tasks = CounterMetricFamily(
            "aiotask_cluster_tasks",
            "Task events seen from every worker and producer, by queue, task and state",
            labels=["queue", "task", "state"],
        )
        for (queue, task, state), count in sorted(_copy(m.tasks).items()):
            tasks.add_metric([queue, task, state], count)
        yield tasks
        runtime = HistogramMetricFamily(
            "aiotask_cluster_task_duration_seconds",
            "Run times reported by task events, every worker",
            labels=["queue", "task"],
        )
        for (queue, task), hist in sorted(_copy(m.runtimes).items()):
            runtime.add_metric([queue, task], hist.buckets(), hist.total)
        yield runtime
        yield from _queue_families(_copy(m.queues))
        online = m.online()
        yield GaugeMetricFamily(
            "aiotask_workers_online", "Workers with a recent heartbeat", value=len(online)
        )
        active = GaugeMetricFamily(
            "aiotask_worker_active_tasks",
            "Tasks running per online worker (as of its last event)",
            labels=["worker"],
        )
        for name, worker in sorted(online.items()):
            active.add_metric([name], worker.active)
        yield active


def _queue_families(queues: dict[str, QueueCounts]) -> Iterator[Metric]:
    specs = (
        ("aiotask_queue_depth", "Messages ready to be delivered", "ready"),
        ("aiotask_queue_delayed", "Messages held until their eta", "delayed"),
        ("aiotask_queue_in_flight", "Messages delivered and not yet settled", "in_flight"),
        ("aiotask_queue_dead_letters", "Messages in the queue's dead letters", "dead"),
    )
    for name, doc, field in specs:
        family = GaugeMetricFamily(name, doc, labels=["queue"])
        for queue, counts in sorted(queues.items()):
            value = getattr(counts, field)
            if value is not None:  # the broker cannot tell: no sample rather than a false 0
                family.add_metric([queue], value)
        yield family
