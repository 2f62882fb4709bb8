"""A worker's Prometheus metrics: counters and histograms fed by the worker's probe hooks,
gauges read from the worker when scraped (no per-task cost for those)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from aiotask import _hooks
from aiotask.exceptions import ConfigurationError
from aiotask.middleware.base import Middleware
from aiotask.worker._probe import RETRIED, Probe

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.core import GaugeMetricFamily
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

    Add it to the producers' app: `App(..., middleware=[SendTime()])`; a worker run with
    `--metrics-port` adds it for the messages it publishes itself (retries, canvas steps).
    """

    async def before_send(self, message: Message) -> Message:
        return message.evolve(headers={**message.headers, SENT_HEADER: f"{time.time():.6f}"})


class WorkerMetrics(Probe):
    """The worker's metrics in their own registry (`self.registry`); pass as `Worker(probe=)`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.tasks = Counter(
            "aiotask_tasks",
            "Tasks finished by this worker, by queue, task and outcome state",
            ["queue", "task", "state"],
            registry=registry,
        )
        self.duration = Histogram(
            "aiotask_task_duration_seconds",
            "Run time of tasks (the task itself, middleware included)",
            ["queue", "task"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "aiotask_queue_wait_seconds",
            "Time from send (or eta) to start; from receipt when the sender did not stamp it",
            ["queue", "task"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "aiotask_task_retries",
            "Retries scheduled, by queue and task",
            ["queue", "task"],
            registry=registry,
        )
        self.dead = Counter(
            "aiotask_dead_letters",
            "Messages this worker dead-lettered (undecodable, unknown task, rejected)",
            ["queue"],
            registry=registry,
        )
        self.reconnects = Counter(
            "aiotask_broker_reconnects",
            "Broker connection failures that started a reconnect, by server kind",
            ["server"],
            registry=registry,
        )
        self._received: dict[Delivery, float] = {}
        # label children cached: .labels() takes a lock and builds a tuple on every call
        self._children: dict[tuple[str, ...], object] = {}
        self._worker: Worker | None = None
        _hooks.reconnect_listeners.append(self._reconnecting)

    def close(self) -> None:
        """Stop counting reconnects (the listener is process-wide)."""
        if self._reconnecting in _hooks.reconnect_listeners:
            _hooks.reconnect_listeners.remove(self._reconnecting)

    # --- probe hooks (called on the worker's event loop) ----------------------------------------
    def attached(self, worker: Worker) -> None:
        self._worker = worker
        self.registry.register(_Gauges(worker))

    def received(self, deliveries: Sequence[Delivery]) -> None:
        at = time.time()
        for delivery in deliveries:
            self._received[delivery] = at

    def started(self, delivery: Delivery, message: Message) -> None:
        at = time.time()
        received = self._received.pop(delivery, at)
        sent = message.headers.get(SENT_HEADER)
        since = received
        if sent is not None:
            with contextlib.suppress(ValueError):
                since = float(sent)
        if message.eta is not None and message.eta > since:
            since = message.eta
        key = ("w", delivery.queue, message.task)
        wait = self._children.get(key)
        if wait is None:
            wait = self._children[key] = self.wait.labels(delivery.queue, message.task)
        wait.observe(max(at - since, 0.0))  # type: ignore[attr-defined]

    def finished(
        self, delivery: Delivery, message: Message, state: str, seconds: float | None
    ) -> None:
        queue, task = delivery.queue, message.task
        key: tuple[str, ...] = ("t", queue, task, state)
        count = self._children.get(key)
        if count is None:
            count = self._children[key] = self.tasks.labels(queue, task, state)
        count.inc()  # type: ignore[attr-defined]
        if seconds is None:
            self._received.pop(delivery, None)
            return
        key = ("d", queue, task)
        duration = self._children.get(key)
        if duration is None:
            duration = self._children[key] = self.duration.labels(queue, task)
        duration.observe(seconds)  # type: ignore[attr-defined]
        if state == RETRIED:
            self.retries.labels(queue, task).inc()

    def dead_lettered(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._received.pop(delivery, None)
            self.dead.labels(delivery.queue).inc()

    def _reconnecting(self, server: str) -> None:
        self.reconnects.labels(server).inc()


class _Gauges:
    """Read at scrape time, from the HTTP server's thread (len() of a dict is atomic)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        d = w.dispatcher
        yield _gauge("aiotask_tasks_in_flight", "Tasks running now", len(d.running))
        yield _gauge(
            "aiotask_prefetch_buffered",
            "Messages held but not started (prefetched, or waiting for a rate-limit token)",
            len(d.buffer) + len(d.deferred),
        )
        yield _gauge("aiotask_pool_children", "Live process-pool children", _children(w))
        yield _gauge("aiotask_worker_concurrency", "Coroutine tasks at once (-c)", w.concurrency)
        yield _gauge("aiotask_worker_prefetch", "Messages held at most (--prefetch)", w.prefetch)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _children(worker: Worker) -> int:
    for _ in range(3):  # the loop thread may add or drop a child while we count
        try:
            return len(worker.pool.pids)
        except RuntimeError:
            continue
    return 0


def serve(
    metrics: WorkerMetrics,
    port: int,
    addr: str = "0.0.0.0",  # noqa: S104 - scraped remotely
) -> tuple[WSGIServer, Thread]:
    """Serve `/metrics` on `addr:port` from a daemon thread; `server.shutdown()` stops it."""
    return start_http_server(port, addr, registry=metrics.registry)
