"""A worker's Prometheus metrics.

The hot path only adds to plain Python numbers (a few dict lookups and one bisect per task):
prometheus-client's own Counter/Histogram take a lock per increment, which cost several
microseconds per task. The numbers are turned into metric families when scraped, from the HTTP
server's thread; gauges are read from the worker then too.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Protocol, TypeVar

from aiotask import _hooks
from aiotask.exceptions import ConfigurationError
from aiotask.middleware.base import Middleware
from aiotask.worker._probe import RETRIED, Probe

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        "metrics need prometheus-client: pip install 'aiotask[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from aiotask.brokers.base import Delivery
    from aiotask.protocol import Message
    from aiotask.worker import Worker

K = TypeVar("K")
V = TypeVar("V")
#: header stamped by SendTime: unix seconds when the message was published
SENT_HEADER = "aiotask-sent"
#: run times: 1 ms .. 10 min
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    600,
)
#: queue waits: 1 ms .. 1 h
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class SendTime(Middleware):
    """Stamps each message with the time it is published, so the worker's queue wait
    (`aiotask_queue_wait_seconds`) counts from the send, not from when the worker took it.

    Opt-in: `App(..., middleware=[SendTime()])`. The header costs each message about 2 us to
    decode on the worker, so it is not added by `--metrics-port`.
    """

    async def before_send(self, message: Message) -> Message:
        return message.evolve(headers={**message.headers, SENT_HEADER: f"{time.time():.6f}"})


class _Histogram:
    """Bucket counts (not cumulative) and the sum; exported cumulatively at scrape."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        counts, running = list(self.counts), 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class _TaskStats:
    """Everything counted for one (queue, task)."""

    __slots__ = ("duration", "states", "wait")

    def __init__(self) -> None:
        self.states: dict[str, int] = {}
        self.duration = _Histogram(DURATION_BUCKETS)
        self.wait = _Histogram(WAIT_BUCKETS)


class WorkerMetrics(Probe):
    """The worker's metrics in their own registry (`self.registry`); pass as `Worker(probe=)`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats: dict[tuple[str, str], _TaskStats] = {}
        self.dead: dict[str, int] = {}
        #: (queue, reason) -> bodies refused before decoding (bad-signature, too-large, ...)
        self.refusals: dict[tuple[str, str], int] = {}
        self.reconnects: dict[str, int] = {}
        self._received: dict[Delivery, float] = {}
        self._worker: Worker | None = None
        self.registry.register(_Collector(self))
        _hooks.reconnect_listeners.append(self._reconnecting)

    def close(self) -> None:
        """Stop counting reconnects (the listener is process-wide)."""
        if self._reconnecting in _hooks.reconnect_listeners:
            _hooks.reconnect_listeners.remove(self._reconnecting)

    def _stats(self, queue: str, task: str) -> _TaskStats:
        stats = self.stats.get((queue, task))
        if stats is None:
            stats = self.stats[(queue, task)] = _TaskStats()
        return stats

    # --- probe hooks (called on the worker's event loop) ----------------------------------------
    def attached(self, worker: Worker) -> None:
        self._worker = worker

    def received(self, deliveries: Sequence[Delivery]) -> None:
        self._received.update(dict.fromkeys(deliveries, time.time()))

    def started(self, delivery: Delivery, message: Message) -> None:
        # inlined (no helper calls): this and finished() run once per task
        at = time.time()
        since = self._received.pop(delivery, at)
        if message.headers:
            sent = message.headers.get(SENT_HEADER)
            if sent is not None:
                since = _float(sent, since)
        eta = message.eta
        if eta is not None and eta > since:
            since = eta
        stats = self.stats.get((delivery.queue, message.task))
        if stats is None:
            stats = self._stats(delivery.queue, message.task)
        wait = at - since
        if wait < 0.0:
            wait = 0.0
        hist = stats.wait
        hist.counts[bisect_left(WAIT_BUCKETS, wait)] += 1
        hist.total += wait

    def finished(
        self, delivery: Delivery, message: Message, state: str, seconds: float | None
    ) -> None:
        stats = self.stats.get((delivery.queue, message.task))
        if stats is None:
            stats = self._stats(delivery.queue, message.task)
        states = stats.states
        states[state] = states.get(state, 0) + 1
        if seconds is None:
            self._received.pop(delivery, None)
        else:
            hist = stats.duration
            hist.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
            hist.total += seconds

    def refused(self, delivery: Delivery, reason: str) -> None:
        key = (delivery.queue, reason)
        self.refusals[key] = self.refusals.get(key, 0) + 1

    def dead_lettered(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._received.pop(delivery, None)
            self.dead[delivery.queue] = self.dead.get(delivery.queue, 0) + 1

    def _reconnecting(self, server: str) -> None:
        self.reconnects[server] = self.reconnects.get(server, 0) + 1


def _float(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


class _Collector:
    """Builds the metric families at scrape time (from the HTTP server's thread: copies of
    dicts are taken first, so the event loop may keep counting meanwhile)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        stats = _copy(m.stats)
        yield from _task_families(stats)
        dead = CounterMetricFamily(
            "aiotask_dead_letters",
            "Messages this worker dead-lettered (undecodable, unknown task, rejected)",
            labels=["queue"],
        )
        for queue, count in _copy(m.dead).items():
            dead.add_metric([queue], count)
        yield dead
        refused = CounterMetricFamily(
            "aiotask_refused_messages",
            "Messages dead-lettered before decoding, by reason (bad-signature, too-large, "
            "undecodable)",
            labels=["queue", "reason"],
        )
        for (queue, reason), count in _copy(m.refusals).items():
            refused.add_metric([queue, reason], count)
        yield refused
        reconnects = CounterMetricFamily(
            "aiotask_broker_reconnects",
            "Broker connection failures that started a reconnect, by server kind",
            labels=["server"],
        )
        for server, count in _copy(m.reconnects).items():
            reconnects.add_metric([server], count)
        yield reconnects
        if m._worker is not None:
            yield from _gauges(m._worker)


def _task_families(stats: dict[tuple[str, str], _TaskStats]) -> Iterator[Metric]:
    tasks = CounterMetricFamily(
        "aiotask_tasks",
        "Tasks finished by this worker, by queue, task and outcome state",
        labels=["queue", "task", "state"],
    )
    retries = CounterMetricFamily(
        "aiotask_task_retries", "Retries scheduled, by queue and task", labels=["queue", "task"]
    )
    duration = HistogramMetricFamily(
        "aiotask_task_duration_seconds",
        "Run time of tasks (the task itself, middleware included)",
        labels=["queue", "task"],
    )
    wait = HistogramMetricFamily(
        "aiotask_queue_wait_seconds",
        "Time from send (or eta) to start; from receipt when the sender did not stamp it",
        labels=["queue", "task"],
    )
    for (queue, task), s in sorted(stats.items()):
        states = _copy(s.states)
        for state, count in sorted(states.items()):
            tasks.add_metric([queue, task, state], count)
        retries.add_metric([queue, task], states.get(RETRIED, 0))
        duration.add_metric([queue, task], s.duration.buckets(), s.duration.total)
        wait.add_metric([queue, task], s.wait.buckets(), s.wait.total)
    yield from (tasks, retries, duration, wait)


def _gauges(worker: Worker) -> Iterator[Metric]:
    d = worker.dispatcher
    yield _gauge("aiotask_tasks_in_flight", "Tasks running now", len(d.running))
    yield _gauge(
        "aiotask_prefetch_buffered",
        "Messages held but not started (prefetched, or waiting for a rate-limit token)",
        len(d.buffer) + len(d.deferred),
    )
    yield _gauge("aiotask_pool_children", "Live process-pool children", _children(worker))
    yield _gauge("aiotask_worker_concurrency", "Coroutine tasks at once (-c)", worker.concurrency)
    yield _gauge("aiotask_worker_prefetch", "Messages held at most (--prefetch)", worker.prefetch)


def _copy(mapping: dict[K, V]) -> dict[K, V]:
    """A copy of a dict the event loop may be adding to (retried if it grew meanwhile)."""
    for _ in range(10):
        try:
            return dict(mapping)
        except RuntimeError:
            continue
    return {}


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _children(worker: Worker) -> int:
    for _ in range(3):  # the loop thread may add or drop a child while we count
        try:
            return len(worker.pool.pids)
        except RuntimeError:
            continue
    return 0


class Served(Protocol):
    """Anything with a registry to serve: WorkerMetrics, cluster.ClusterMetrics."""

    registry: CollectorRegistry


def serve(
    metrics: Served,
    port: int,
    addr: str = "0.0.0.0",  # noqa: S104 - scraped from elsewhere
) -> tuple[WSGIServer, Thread]:
    """Serve `/metrics` on `addr:port` from a daemon thread; `server.shutdown()` stops it."""
    return start_http_server(port, addr, registry=metrics.registry)
