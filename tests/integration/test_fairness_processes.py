"""Fairness across keys with real workers: tenant A queues 2,000 tasks, then tenant B 20;
B's tasks all finish before A's N-th (assertions on completion ORDER, never on time).

SQLite, Redis, RabbitMQ and PostgreSQL run `aiotask worker` processes; the memory broker runs a
Worker in this process (memory:// crosses no process boundary). A kill -9 of a worker holding fair
messages gets them redelivered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.brokers.base import Delivery, Outgoing
from aiotask.protocol import decode
from aiotask.testing import start_worker
from tests.procs import stop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.slow

A_TASKS, B_TASKS = 2000, 20
#: B's last completion must come before A's N-th: N is small next to A's 2,000
N = 200

MODULE = textwrap.dedent(
    """
    import asyncio, os
    from aiotask import App

    app = App("fair")
    LOG = os.environ["TEST_LOG"]

    @app.task(name="fair.job", fairness_key="tenant_id")
    async def job(tenant_id: str, i: int, hold: float = 0.0) -> None:
        if hold:
            with open(LOG + ".started", "a") as f:
                f.write(f"{tenant_id} {i}\\n")
            await asyncio.sleep(hold)
        with open(LOG, "a") as f:  # one short append per line: atomic across processes
            f.write(f"{tenant_id} {i}\\n")
    """
)


class Workers:
    def __init__(
        self, tmp: Path, url: str, prefix: str = "aiotask", backend: str | None = None
    ) -> None:
        backend = backend or url
        (tmp / "fair_tasks.py").write_text(MODULE)
        self.tmp, self.log = tmp, tmp / "done"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
        self.env.update(
            AIOTASK_BROKER_URL=url,
            AIOTASK_RESULT_BACKEND=backend,
            AIOTASK_PREFETCH="8",
            AIOTASK_VISIBILITY_TIMEOUT="3",
            AIOTASK_WORKER_HEARTBEAT_INTERVAL="1",
            AIOTASK_WORKER_LOST_AFTER="3",
            AIOTASK_KEY_PREFIX=prefix,
            TEST_LOG=str(self.log),
            PYTHONPATH=str(tmp),
        )
        self.procs: list[subprocess.Popen[str]] = []
        self.app = App("fair", broker=url, backend=backend, key_prefix=prefix)

    def start(self, concurrency: int = 4) -> subprocess.Popen[str]:
        out = (self.tmp / f"worker-{len(self.procs)}.log").open("w")
        with out:
            argv = ["worker", "-A", "fair_tasks:app", "-l", "INFO", "-c", str(concurrency)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "aiotask", *argv],
                cwd=self.tmp, env=self.env, stdout=subprocess.DEVNULL, stderr=out, text=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def all_ready(self) -> bool:
        logs = [self.tmp / f"worker-{i}.log" for i in range(len(self.procs))]
        return all(" ready" in log.read_text() for log in logs)

    def done(self) -> list[tuple[str, int]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [(row[0], int(row[1])) for row in rows if len(row) == 2]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("worker-*.log"))
        )

    async def wait_for(self, test: object, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if test():  # type: ignore[operator]
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what} did not happen; done: {self.done()}\n{self.logs()}")


@pytest.fixture(params=["sqlite", "redis", "amqp", "postgres"])
async def workers(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[Workers]:
    if request.param in ("redis", "postgres"):  # a key prefix (Redis), a schema (PostgreSQL)
        w = Workers(tmp_path, request.getfixturevalue(f"{request.param}_url"), namespace)
    elif request.param == "amqp":  # no result backend on RabbitMQ: results are not read here
        w = Workers(tmp_path, request.getfixturevalue("amqp_url"), namespace, "memory://")
    else:
        w = Workers(tmp_path, f"sqlite:///{tmp_path}/fair.db")
    try:
        yield w
    finally:
        for p in w.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if request.param == "amqp":  # the queue, its key queues and announcement stream
            await delete_amqp_queue(w.app, w.app.route("fair.job"))
        await w.app.close()


def _tenant(tenant_id: str, *_: object) -> str:
    return tenant_id


async def _send_backlog(app: App) -> None:
    """A through the client's own registration of the task (its fairness_key option), B by
    name with a per-call fairness_key."""

    @app.task(name="fair.job", fairness_key="tenant_id")
    async def job(tenant_id: str, i: int, hold: float = 0.0) -> None: ...

    await job.send_batch([job.call("A", i) for i in range(A_TASKS)])
    for i in range(B_TASKS):
        await app.send_task("fair.job", ["B", i], fairness_key=_tenant)


def _a_before_b_finished(done: list[tuple[str, int]]) -> int:
    """How many of A's tasks completed before B's last one."""
    last_b = max(i for i, (tenant, _) in enumerate(done) if tenant == "B")
    return sum(1 for tenant, _ in done[:last_b] if tenant == "A")


async def test_workers_serve_b_before_a_backlog_drains(workers: Workers) -> None:
    await _send_backlog(workers.app)
    workers.start()
    workers.start()
    await workers.wait_for(
        lambda: sum(1 for t, _ in workers.done() if t == "B") == B_TASKS, "B's tasks finishing"
    )
    done = workers.done()
    assert _a_before_b_finished(done) < N, done[: N + B_TASKS]
    assert sum(1 for t, _ in done if t == "A") < A_TASKS  # A's backlog was still there
    # the first worker may finish B alone while the second still starts (a SIGTERM before its
    # handlers exist ends it with -15): stop both once they are up
    await workers.wait_for(workers.all_ready, "both workers ready")
    codes = [stop(p) for p in workers.procs]
    assert codes == [0, 0], workers.logs()


@pytest.mark.timeout(150)  # its waits (45 s each) fail first, with the workers' logs
async def test_kill9_redelivers_fair_messages(workers: Workers) -> None:
    app = workers.app
    for tenant, hold in (("K", 30.0), ("L", 0.0)):
        for i in range(3):
            await app.send_task("fair.job", [tenant, i, hold], fairness_key=_tenant)
    victim = workers.start()
    started = workers.log.with_name("done.started")
    await workers.wait_for(
        lambda: started.exists() and started.read_text().count("K") >= 3, "K started", 45
    )
    await _l_settled(workers)  # else L's tasks, done but not yet acked, run twice
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # a survivor takes the dead worker's leases over; K's holds run again (shorter this time)
    (workers.tmp / "fair_tasks.py").write_text(MODULE.replace("await asyncio.sleep(hold)", ""))
    workers.start()
    every = {(tenant, i) for tenant in "KL" for i in range(3)}
    await workers.wait_for(lambda: every <= set(workers.done()), "redelivery", 45)
    # K's ran only on the survivor, once each. L's may have run twice (at-least-once): done on
    # the victim before the kill, but their acks not yet flushed (seen in CI under load, where
    # waiting for an exact list of six hung the test until its timeout).
    assert sorted(i for t, i in workers.done() if t == "K") == [0, 1, 2], workers.done()
    assert all(stop(p) == 0 for p in workers.procs[1:])


async def _l_settled(workers: Workers) -> None:
    """L's three tasks done and acked: only K's three are held (where the broker counts them)."""
    await workers.wait_for(lambda: [t for t, _ in workers.done()] == ["L"] * 3, "L done", 45)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        (stats,) = await workers.app.broker.queue_stats([workers.app.route("fair.job")])
        if stats.in_flight in (3, None):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"L's acks did not arrive: {stats}")


async def test_memory_worker_serves_b_before_a_backlog_drains() -> None:
    app = App("fair-mem", broker="memory://", backend="memory://")
    done: list[str] = []

    @app.task(name="fair.mem", fairness_key="tenant_id")
    async def job(tenant_id: str, i: int) -> None:
        await asyncio.sleep(0)
        done.append(tenant_id)

    async with app:
        await job.send_batch([job.call("A", i) for i in range(A_TASKS)])
        await job.send_batch([job.call("B", i) for i in range(B_TASKS)])
        async with start_worker(app, concurrency=4, prefetch=8):
            while done.count("B") < B_TASKS:
                await asyncio.sleep(0.01)
        last_b = max(i for i, t in enumerate(done) if t == "B")
        assert done[:last_b].count("A") < N


@pytest.mark.parametrize("scheme", ["memory", "sqlite", "postgres"])
async def test_keyed_messages_count_in_stats_and_purge(
    scheme: str, tmp_path: Path, request: pytest.FixtureRequest, namespace: str
) -> None:
    urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/f.db"}
    url = urls.get(scheme) or request.getfixturevalue("postgres_url")
    app = App("fair-admin", broker=url, key_prefix=namespace)
    async with app:
        broker = app.broker
        await broker.publish(
            [Outgoing("fq", b"x", f"m{i}", fair_key="ab"[i % 2]) for i in range(6)]
            + [Outgoing("fq", b"y", "plain")]
        )
        (stats,) = await broker.queue_stats(["fq"])
        assert stats.ready == 7
        assert "fq" in await broker.known_queues()
        got = await broker.receive(["fq"], 3)
        assert [d.message_id for d in got] == ["m0", "m1", "plain"]  # a, b, then the unkeyed
        await broker.nack(got[:1], requeue=False, reason="test")
        assert [d.message_id for d in await broker.dead_letters("fq")] == [got[0].message_id]
        await broker.nack(got[1:], requeue=True)
        assert await broker.purge("fq") == 6
        (stats,) = await broker.queue_stats(["fq"])
        assert stats.ready == 0


async def test_amqp_serves_keys_in_turn_without_a_warning(
    amqp_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ honours the key (a queue per key): B's one task is not behind A's three."""
    app = App("fair-amqp", broker=amqp_url, key_prefix=namespace)

    @app.task(name="fair.amqp", fairness_key="tenant_id")
    async def job(tenant_id: str, i: int) -> None: ...

    async with app:
        queue = app.route("fair.amqp")
        try:
            for tenant, i in (("A", 0), ("A", 1), ("A", 2), ("B", 0)):
                await job.send(tenant, i)
            got: list[Delivery] = []
            for _ in range(4):  # one at a time, as a worker with one free slot takes them
                got += await receive_n(app, [queue], 1)
                await app.broker.ack(got[-1:])
            order = [decode(d.body).args for d in got]
            assert order.index(["B", 0]) <= 1, order
        finally:
            await delete_amqp_queue(app, queue)
    assert not [r for r in caplog.records if "fairness_key is not supported" in r.message]


async def delete_amqp_queue(app: App, queue: str) -> None:
    from aiotask.brokers.rabbitmq import RabbitMQBroker

    broker = app.broker
    assert isinstance(broker, RabbitMQBroker)
    await broker.delete_queue(queue)


async def receive_n(app: App, queues: list[str], n: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(10):
        while len(got) < n:
            got += await app.broker.receive(queues, n - len(got))
    return got
