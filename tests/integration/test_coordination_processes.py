"""Coordinated limits with real `aiotask worker` processes on each shared store: SQLite,
Redis, PostgreSQL, and RabbitMQ as broker with the Redis result backend as the store.

Every task appends to a log file (an external counter, outside the store it is checked
against): a start time for rate limits, enter/leave times for concurrency limits. The
assertions are counts within windows and overlaps, never speeds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from tests import leaks
from tests.conftest import _aside
from tests.procs import stop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

MODULE = textwrap.dedent(
    """
    import asyncio, os, time
    from aiotask import App

    app = App("lim")
    LOG = os.environ["TEST_LOG"]

    def _log(*fields: object) -> None:
        with open(LOG, "a") as f:  # one short append per line: atomic across processes
            f.write(" ".join(map(str, fields)) + "\\n")

    @app.task(name="lim.tick", rate_limit="10/s", rate_limit_scope="global")
    async def tick(i: int) -> int:
        _log("tick", time.time(), i)
        return i

    @app.task(name="lim.keyed", rate_limit="4/s", rate_limit_scope="global",
              rate_limit_key="user")
    async def keyed(i: int, user: str) -> int:
        _log("keyed", time.time(), user)
        return i

    @app.task(name="lim.fast", rate_limit="50/s", rate_limit_scope="global")
    async def fast(i: int) -> int:
        _log("fast", time.time(), i)
        return i

    @app.task(name="lim.free")
    async def free(i: int) -> int:
        _log("free", time.time(), i)
        return i

    @app.task(name="lim.hold", concurrency_limit=2, concurrency_key="customer")
    async def hold(customer: str, i: int) -> int:
        _log("enter", time.time(), customer, i)
        slow = os.path.exists(os.environ["TEST_SLOW"])
        await asyncio.sleep(600 if slow else 0.3)
        _log("leave", time.time(), customer, i)
        return i
    """
)
RATE = 10.0
#: how late a timer may fire on a loaded 2-core machine; widens each window's allowance
JITTER = 0.5


KINDS = ["sqlite", "redis", "amqp", "postgres"]


def _urls(kind: str, tmp: Path) -> tuple[str, str]:
    """(broker, backend) of a kind; the shared servers must answer (or the test skips)."""
    from tests.conftest import AMQP_URL, POSTGRES_URL, REDIS_URL, _host_port, need_service

    if kind == "sqlite":
        url = f"sqlite:///{tmp}/lim.db"
        return url, url
    if kind == "postgres":  # tables in the schema named by the namespace
        need_service("PostgreSQL", *_host_port(POSTGRES_URL, 5432))
        return POSTGRES_URL, POSTGRES_URL
    need_service("Redis", *_host_port(REDIS_URL, 6379))
    if kind == "redis":
        return REDIS_URL, REDIS_URL
    need_service("RabbitMQ", *_host_port(AMQP_URL, 5672))
    return AMQP_URL, REDIS_URL


class Cluster:
    """Worker processes over one broker/backend, their log files, and a client app."""

    def __init__(self, tmp: Path, urls: tuple[str, str], prefix: str) -> None:
        (tmp / "lim_tasks.py").write_text(MODULE)
        self.tmp, self.log, self.urls, self.prefix = tmp, tmp / "runs", urls, prefix
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
        self.env.update(
            AIOTASK_BROKER_URL=urls[0],
            AIOTASK_RESULT_BACKEND=urls[1],
            AIOTASK_KEY_PREFIX=prefix,
            AIOTASK_CONCURRENCY_SLOT_LEASE="3",
            # small holds: messages spread over the workers, and backlogs get parked
            AIOTASK_PREFETCH="4",
            AIOTASK_WORKER_HEARTBEAT_INTERVAL="1",
            AIOTASK_WORKER_LOST_AFTER="3",
            AIOTASK_VISIBILITY_TIMEOUT="6",
            TEST_LOG=str(self.log),
            TEST_SLOW=str(tmp / "slow"),
            PYTHONPATH=str(tmp),
        )
        self.procs: list[subprocess.Popen[str]] = []
        self.app = App("lim", broker=urls[0], backend=urls[1], key_prefix=prefix)

    def start(self, n: int = 1, own_queues: bool = False) -> list[subprocess.Popen[str]]:
        """`n` workers; with `own_queues`, worker i also consumes queue q<i> alone."""
        started = []
        for i in range(n):
            out = (self.tmp / f"worker-{len(self.procs)}.log").open("w")
            with out:
                queues = ["-Q", f"default,q{i}"] if own_queues else []
                argv = ["worker", "-A", "lim_tasks:app", "-l", "INFO", *queues]
                proc = subprocess.Popen(
                    [sys.executable, "-m", "aiotask", *argv],
                    cwd=self.tmp, env=self.env, stdout=subprocess.DEVNULL, stderr=out, text=True,
                )  # fmt: skip
            self.procs.append(proc)
            started.append(proc)
        return started

    def _all_ready(self) -> bool:
        logs = [(self.tmp / f"worker-{i}.log").read_text() for i in range(len(self.procs))]
        return all(" ready" in text for text in logs)

    async def ready(self) -> None:
        """Every started worker has logged that it is ready."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._all_ready():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("workers did not start:\n" + self.logs())

    def ready_sync(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._all_ready():
                return
            time.sleep(0.1)
        raise AssertionError("workers did not start:\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("worker-*.log"))
        )

    def lines(self, kind: str) -> list[list[str]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [row[1:] for row in rows if row and row[0] == kind]

    def stop_all(self) -> list[int]:
        return [stop(p) for p in self.procs if p.returncode is None or p.poll() is None]

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def _drop_worker_queues(urls: tuple[str, str], namespace: str) -> None:
    if urls[0].startswith("amqp"):  # the per-worker queues (default ones: namespace)
        names = [f"{namespace}.q{i}{x}" for i in range(4) for x in ("", ".dead", ".keys")]
        await leaks.delete_queues(urls[0], names)


@pytest.fixture(scope="module", params=KINDS)
def four_workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, module_namespace: str
) -> Iterator[Cluster]:
    """Four workers (worker i also alone on queue q<i>), started once per kind for the tests
    that only send work: each uses task names of its own, so they never share a limit. A
    fresh set per test cost four process starts each (the tests' largest cost)."""
    tmp = tmp_path_factory.mktemp(f"lim-{request.param}")
    urls = _urls(request.param, tmp)
    c = Cluster(tmp, urls, module_namespace)
    c.start(4, own_queues=True)
    try:
        c.ready_sync()
        yield c
        assert c.stop_all() == [0, 0, 0, 0], c.logs()  # every warm shutdown clean
    finally:
        c.kill_all()
        _aside(_drop_worker_queues(urls, module_namespace))  # a loop of its own, in a thread


@pytest.fixture
async def shared(four_workers: Cluster) -> AsyncIterator[Cluster]:
    """The module's four workers, with a client app of this test's loop."""
    c = four_workers
    c.app = App("lim", broker=c.urls[0], backend=c.urls[1], key_prefix=c.prefix)
    try:
        yield c
    finally:
        await c.app.close()


@pytest.fixture(params=KINDS)
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[Cluster]:
    """Workers of this test alone (it kills them)."""
    urls = _urls(request.param, tmp_path)
    from tests.conftest import USED_AMQP, USED_POSTGRES, USED_REDIS

    node = request.node.nodeid  # the namespace fixture cleans the servers this test used
    if request.param in ("redis", "amqp"):  # amqp: Redis is the result backend
        USED_REDIS.add(node)
    if request.param == "amqp":
        USED_AMQP.add(node)
    if request.param == "postgres":
        USED_POSTGRES.add(node)
    c = Cluster(tmp_path, urls, namespace)
    try:
        yield c
    finally:
        c.kill_all()
        await c.app.close()
        await _drop_worker_queues(urls, namespace)


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _overlaps(spans: Iterator[tuple[float, float]]) -> int:
    """The most spans open at one instant (a leave at t closes before an enter at t opens)."""
    events = sorted(e for a, b in spans for e in ((a, 1), (b, -1)))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


async def test_four_workers_share_one_global_rate_and_keys_have_their_own(
    shared: Cluster,
) -> None:
    cluster = shared
    app = cluster.app
    # a quarter of the ticks on each worker's own queue: every worker runs its share, so a
    # per-worker limit would let 4 x 10/s through
    ticks = [await app.send_task("lim.tick", args=(i,), queue=f"q{i % 4}") for i in range(50)]
    keyed = [await app.send_task("lim.keyed", args=(i, u)) for i in range(12) for u in "ab"]
    free = [await app.send_task("lim.free", args=(i,)) for i in range(20)]
    # unthrottled tasks are not held up behind the throttled backlog (no speed asserted)
    assert [await r.get(timeout=30) for r in free] == list(range(20)), cluster.logs()
    assert [await r.get(timeout=60) for r in ticks] == list(range(50)), cluster.logs()
    assert len([await r.get(timeout=60) for r in keyed]) == 24

    starts = [float(row[0]) for row in cluster.lines("tick")]
    assert len(starts) == 50
    # per-worker limits would allow 4 x 10/s; the global one allows 10/s in every window
    for window in (1.0, 2.0, 4.0):
        assert _max_in_window(starts, window) <= RATE * (window + JITTER) + 1, window
    for user in "ab":
        times = [float(t) for t, u in cluster.lines("keyed") if u == user]
        assert len(times) == 12
        assert _max_in_window(times, 2.0) <= 4.0 * (2.0 + JITTER) + 1, user
    both = [float(t) for t, _ in cluster.lines("keyed")]
    # two keys, two budgets: together they ran faster than one key's limit allows
    assert _max_in_window(both, 2.0) > 4.0 * 2.0 + 1


async def test_a_global_50_per_second_holds_across_four_workers(shared: Cluster) -> None:
    cluster = shared
    # every worker holds a share of the backlog: per-worker budgets would allow 4 x 50/s
    sent = [
        await cluster.app.send_task("lim.fast", args=(i,), queue=f"q{i % 4}") for i in range(200)
    ]
    assert [await r.get(timeout=60) for r in sent] == list(range(200)), cluster.logs()
    starts = [float(row[0]) for row in cluster.lines("fast")]
    assert len(starts) == 200
    for window in (0.5, 1.0, 2.0):
        assert _max_in_window(starts, window) <= 50.0 * (window + JITTER) + 1, window


async def test_concurrency_limit_holds_across_four_workers(shared: Cluster) -> None:
    cluster = shared
    results = [
        await cluster.app.send_task("lim.hold", args=(c, i)) for i in range(12) for c in "xy"
    ]
    assert len([await r.get(timeout=60) for r in results]) == 24, cluster.logs()
    enter = {(c, i): float(t) for t, c, i in cluster.lines("enter")}
    leave = {(c, i): float(t) for t, c, i in cluster.lines("leave")}
    for customer in "xy":
        spans = ((enter[k], leave[k]) for k in enter if k[0] == customer)
        assert _overlaps(spans) <= 2, customer
    # the limit is per key: x and y ran side by side (more than 2 at once overall)
    assert _overlaps((enter[k], leave[k]) for k in enter) > 2


async def test_worker_killed_9_frees_its_slots_when_the_lease_lapses(cluster: Cluster) -> None:
    (cluster.tmp / "slow").touch()  # the first runs hang: their worker is killed holding slots
    [victim] = cluster.start(1)
    await cluster.ready()
    app = cluster.app
    hung = [await app.send_task("lim.hold", args=("k", i)) for i in range(2)]
    deadline = time.monotonic() + 30
    while len(cluster.lines("enter")) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(cluster.lines("enter")) == 2, cluster.logs()
    backend = await app.result_backend()
    store = backend.coordination_store("lim")
    assert await store.slots_in_use("lim.hold:k") == 2
    victim.kill()  # SIGKILL: no release, no hand-back
    victim.wait()
    killed = time.monotonic()
    (cluster.tmp / "slow").unlink()
    assert await store.slots_in_use("lim.hold:k") == 2  # still leased...
    while await store.slots_in_use("lim.hold:k") and time.monotonic() < killed + 10:
        await asyncio.sleep(0.1)
    lapsed = time.monotonic() - killed
    assert await store.slots_in_use("lim.hold:k") == 0  # ...until the 3 s lease lapses
    assert lapsed <= 3.0 + 2.0  # the lease (3 s), counted from the last renewal before the kill
    cluster.start(1)
    await cluster.ready()
    more = [await app.send_task("lim.hold", args=("k", i)) for i in range(2, 6)]
    # nothing lost: the killed worker's two tasks ran again, and the new ones too
    assert sorted([await r.get(timeout=60) for r in [*hung, *more]]) == list(range(6))
    assert cluster.stop_all() == [0], cluster.logs()
    assert await store.slots_in_use("lim.hold:k") == 0  # released at the end, not left to lapse
