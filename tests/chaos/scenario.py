"""One chaos run on one broker: private servers, real workers, a mixed load, faults, a tally."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiotask import chain, chord, group
from tests.chaos.chaos_tasks import LEDGER_ENV, make_app
from tests.chaos.fleet import ROOT, Fleet
from tests.chaos.proxy import FaultProxy
from tests.servers import RABBITMQ_SERVER, PrivateRabbit, PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from aiotask import App

log = logging.getLogger("chaos")

PROBE_QUEUE = "chaos-probe"
#: Faults each broker can take besides the worker kill loop (SQLite has no server or socket).
SUPPORTED = {
    "sqlite": ("sigstop",),
    "redis": ("restart", "blackhole", "reset", "sigstop"),
    "amqp": ("restart", "blackhole", "reset", "sigstop"),
}


@dataclass(frozen=True)
class Profile:
    """How big and how rough a run is; `chaos-short` is a small `chaos`."""

    name: str
    tasks: int  # plain tasks sent over `duration`
    duration: float  # seconds of load
    canvas_every: float  # seconds between two canvases (chain, group, chord, chord|chain)
    kill_every: float  # seconds between two kill -9 of a worker; 0: none
    faults: tuple[str, ...]  # run one after another during the load, each once per listing
    workers: int = 3
    concurrency: int = 8  # = prefetch: what one worker holds unacknowledged
    lease: float = 10.0  # visibility_timeout
    outage: float = 3.0  # seconds a server stays dead / a black hole lasts
    task_ms: tuple[int, int] = (10, 200)  # a plain task sleeps this long, so kills hit running work
    recover_timeout: float = 60.0
    drain_timeout: float = 150.0
    seed: int = 1


#: CI's run: every fault once per broker, outages past the settler's patience (~6 s), ~2-3 minutes.
SHORT = Profile("short", tasks=600, duration=30, canvas_every=1.0, kill_every=2.0,
                faults=("restart", "blackhole", "reset", "sigstop"),
                lease=10.0, outage=7.0)  # fmt: skip
#: `make chaos`: 10,000 tasks, every fault twice, the default 30 s lease, outages past the lease.
FULL = Profile("full", tasks=10_000, duration=180, canvas_every=0.25, kill_every=2.0,
               faults=("restart", "blackhole", "reset", "sigstop") * 2, lease=30.0,
               outage=12.0, drain_timeout=240.0)  # fmt: skip


@dataclass
class Canvas:
    kind: str
    handle: Any  # AsyncResult or GroupResult
    expected: Any
    nodes: list[str]  # every task id in it, in order


@dataclass
class Tally:
    """Everything one run measured; `report` turns it into a row."""

    broker: str
    commit: str = ""
    faults: list[str] = field(default_factory=list)
    sent: int = 0
    completed: int = 0
    lost: list[str] = field(default_factory=list)  # "id state ran=N" for the first few
    lost_count: int = 0
    canvases: int = 0
    stuck: list[str] = field(default_factory=list)
    executions: int = 0
    duplicates: int = 0
    dup_bound: int = 0
    kills: int = 0
    restarts: int = 0
    proxy_faults: int = 0
    sigstops: int = 0
    send_retries: int = 0
    recover: dict[str, list[float | None]] = field(default_factory=dict)
    drain: float | None = None
    worker_deaths: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    skipped: str = ""
    error: str = ""  # the harness could not finish the run (counts as a failure)

    @property
    def ok(self) -> bool:
        clean = self.lost_count == 0 and not self.stuck and self.dup_ok
        return not self.skipped and not self.error and clean

    @property
    def running_deaths(self) -> int:
        """Workers that were up and exited by themselves (not a start refused by a dead broker)."""
        return sum("after ready" in x for x in self.worker_deaths)

    @property
    def dup_ok(self) -> bool:
        return self.duplicates <= self.dup_bound


class Servers:
    """The private servers of one broker, the proxy in front of the broker, and the URLs."""

    def __init__(self, broker: str, directory: Path) -> None:
        self.broker = broker
        self.directory = directory
        self.redis: PrivateRedis | None = None
        self.rabbit: PrivateRabbit | None = None
        self.results: PrivateRedis | None = None
        self.proxy: FaultProxy | None = None

    def start(self) -> None:
        aof = ("--appendonly", "yes", "--appendfsync", "always")
        if self.broker == "redis":
            (self.directory / "redis").mkdir()
            self.redis = PrivateRedis(self.directory / "redis", *aof)
            self.redis.start()
            self.proxy = FaultProxy(self.redis.port)
        elif self.broker == "amqp":
            (self.directory / "results").mkdir()
            self.results = PrivateRedis(self.directory / "results", *aof)
            self.results.start()
            self.rabbit = PrivateRabbit(self.directory / "rabbit")
            self.rabbit.start()
            self.proxy = FaultProxy(self.rabbit.port)
        if self.proxy is not None:
            self.proxy.start()

    def stop(self) -> None:
        for server in (self.proxy, self.redis, self.rabbit, self.results):
            if server is not None:
                try:
                    server.stop() if isinstance(server, FaultProxy) else server.kill()
                except Exception:  # cleanup goes on with the others
                    log.exception("could not stop %r", server)

    def urls(self, *, via_proxy: bool) -> tuple[str, str]:
        """(broker, backend) for workers (through the proxy) or the producer (direct)."""
        if self.broker == "sqlite":
            url = f"sqlite:///{self.directory}/chaos.db"
            return url, url
        port = self.proxy.port if via_proxy and self.proxy else None
        if self.redis is not None:
            url = f"redis://127.0.0.1:{port or self.redis.port}/0"
            return url, url
        assert self.rabbit is not None and self.results is not None
        return f"amqp://guest:guest@127.0.0.1:{port or self.rabbit.port}/", self.results.url

    def restart(self, outage: float) -> None:
        """kill -9 the broker's server, leave it dead `outage` seconds, start it again."""
        server = self.redis or self.rabbit
        assert server is not None
        server.kill()
        time.sleep(outage)
        server.start()


class Run:
    def __init__(self, broker: str, profile: Profile, faults: tuple[str, ...], base: Path) -> None:
        self.broker = broker
        self.profile = profile
        # The profile's sequence (e.g. every fault twice), less the kinds not selected.
        self.faults = [f for f in profile.faults if f in faults and f in SUPPORTED[broker]]
        self.kill = "kill" in faults and profile.kill_every > 0
        self.directory = base / broker
        self.directory.mkdir(parents=True)
        self.ledger = self.directory / "ledger"
        self.rng = random.Random(profile.seed)
        self.tally = Tally(broker)
        self.servers = Servers(broker, self.directory)
        self.plain: list[str] = []
        self.canvases: list[Canvas] = []
        self.resent = 0  # messages a failed send may have published anyway
        self.faults_done = False  # the canvas load goes on until the last fault is over

    # --- setup ----------------------------------------------------------------------------------
    def worker_env(self) -> dict[str, str]:
        broker_url, backend_url = self.servers.urls(via_proxy=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
        env.update(
            AIOTASK_BROKER_URL=broker_url,
            AIOTASK_RESULT_BACKEND=backend_url,
            AIOTASK_VISIBILITY_TIMEOUT=str(self.profile.lease),
            AIOTASK_SHUTDOWN_GRACE="10",
            PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env[LEDGER_ENV] = str(self.ledger)
        return env

    async def execute(self) -> Tally:
        p = self.profile
        fleet: Fleet | None = None
        try:
            await asyncio.to_thread(self.servers.start)
            fleet = Fleet(self.directory, self.worker_env(), p.workers, p.concurrency,
                          f"default,{PROBE_QUEUE}")  # fmt: skip
            await asyncio.to_thread(fleet.start)
            broker_url, backend_url = self.servers.urls(via_proxy=False)
            app = make_app(broker=broker_url, backend=backend_url,
                           visibility_timeout=p.lease)  # fmt: skip
            async with app:
                await self._chaos(app, fleet)
            self.tally.exit_codes = await asyncio.to_thread(fleet.stop)
            self._count()
        except Exception as exc:
            log.exception("%s: the run itself failed", self.broker)
            self.tally.error = f"{type(exc).__name__}: {exc}"
        finally:
            if fleet is not None:
                await asyncio.to_thread(fleet.stop, 5)
            await asyncio.to_thread(self.servers.stop)
        return self.tally

    # --- the run --------------------------------------------------------------------------------
    async def _chaos(self, app: App, fleet: Fleet) -> None:
        p = self.profile
        background = [
            asyncio.create_task(self._reaper(fleet)),
            asyncio.create_task(self._killer(fleet)),
        ]
        try:
            async with asyncio.TaskGroup() as tg:  # one fails: the other is cancelled too
                tg.create_task(self._load(app))
                tg.create_task(self._disrupt(app, fleet))
            background[1].cancel()  # faults end with the load: now everything must recover
            started = time.monotonic()
            if await self._drain(app, deadline=started + p.drain_timeout):
                self.tally.drain = time.monotonic() - started
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        self.tally.kills = fleet.kills
        self.tally.worker_deaths = list(fleet.deaths)

    async def _reaper(self, fleet: Fleet) -> None:
        while True:
            await asyncio.sleep(0.5)
            fleet.reap()

    async def _killer(self, fleet: Fleet) -> None:
        if not self.kill:
            return
        while True:
            await asyncio.sleep(self.profile.kill_every)
            fleet.kill_one(self.rng)

    async def _send(self, make: Callable[[], Awaitable[Any]], messages: int = 1) -> Any:
        """Send until the broker confirms (the producer's side of at-least-once).

        A failed send may still have published some of its `messages`: each retry can add that
        many duplicates, so it widens the duplicate bound by as much.
        """
        give_up = time.monotonic() + 120
        while True:
            try:
                return await asyncio.wait_for(make(), 10)
            except Exception as exc:
                self.tally.send_retries += 1
                self.resent += messages
                if time.monotonic() > give_up:
                    raise
                log.debug("send failed (%s: %s), again", type(exc).__name__, exc)
                await asyncio.sleep(0.2)

    async def _load(self, app: App) -> None:
        p = self.profile
        add, tsum = app.tasks["chaos.add"], app.tasks["chaos.tsum"]
        started = time.monotonic()
        next_canvas = started
        k = 0
        while len(self.plain) < p.tasks or not self.faults_done:
            elapsed = time.monotonic() - started
            due = min(p.tasks, int(elapsed / p.duration * p.tasks) + 1)
            while len(self.plain) < due:
                i = len(self.plain)
                tid = f"t{i}-{self.rng.getrandbits(32):08x}"
                ms = self.rng.randint(*p.task_ms)
                send = functools.partial(app.send_task, "chaos.work", args=[i, ms], task_id=tid)
                await self._send(send)
                self.plain.append(tid)
            if time.monotonic() >= next_canvas:
                next_canvas += p.canvas_every
                k += 1
                await self._send_canvas(k, add, tsum)
            await asyncio.sleep(0.01)
        self.tally.sent = len(self.plain)
        self.tally.canvases = len(self.canvases)

    async def _send_canvas(self, k: int, add: Any, tsum: Any) -> None:
        """One canvas with ids we choose, so a stuck one can be told apart node by node."""
        kind = ("chain", "group", "chord", "chord|chain")[k % 4]
        nodes: list[str] = []

        def node(sig: Any, role: str) -> Any:
            nodes.append(f"c{k}-{role}-{self.rng.getrandbits(32):08x}")
            return sig.set(task_id=nodes[-1])

        if kind == "chain":
            expected: Any = k + 6
            canvas: Any = chain(node(add.s(k, 1), "a"), node(add.s(2), "b"), node(add.s(3), "c"))
        elif kind == "group":
            expected = [k + j for j in range(4)]
            canvas = group(node(add.s(k, j), f"g{j}") for j in range(4))
        else:
            header = group(node(add.s(k, j), f"h{j}") for j in range(4))
            canvas = chord(header, node(tsum.s(), "body"))
            expected = 4 * k + 6
            if kind == "chord|chain":
                canvas, expected = canvas | node(add.s(1), "tail"), expected + 1
        handle = await self._send(canvas.send, len(nodes))  # a retry re-sends the same ids
        self.canvases.append(Canvas(kind, handle, expected, nodes))

    async def _disrupt(self, app: App, fleet: Fleet) -> None:
        """The faults, one after another, spread over the load; each followed by a probe."""
        try:
            await self._faults(app, fleet)
        finally:
            self.faults_done = True

    async def _faults(self, app: App, fleet: Fleet) -> None:
        p = self.profile
        if not self.faults:
            await asyncio.sleep(p.duration)
            return
        cost = {
            "restart": p.outage + 6,
            "blackhole": p.outage,
            "reset": 1,
            "sigstop": p.lease * 1.5,
        }
        gap = max(2.0, (p.duration - sum(cost[f] for f in self.faults)) / (len(self.faults) + 1))
        for fault in self.faults:
            await asyncio.sleep(gap)
            self.tally.faults.append(fault)
            log.info("%s: %s", self.broker, fault)
            if fault == "restart":
                await asyncio.to_thread(self.servers.restart, p.outage)
                self.tally.restarts += 1
            elif fault == "blackhole":
                assert self.servers.proxy is not None
                self.servers.proxy.blackhole()
                await asyncio.sleep(p.outage)
                self.servers.proxy.heal()
                self.tally.proxy_faults += 1
            elif fault == "reset":
                assert self.servers.proxy is not None
                self.servers.proxy.reset()
                self.tally.proxy_faults += 1
            elif fault == "sigstop":
                slot = fleet.sigstop(self.rng)
                await asyncio.sleep(p.lease * 1.5)  # well past its lease
                if slot is not None:
                    fleet.sigcont(slot)
                    self.tally.sigstops += 1
            self.tally.recover.setdefault(fault, []).append(await self._probe(app))

    async def _probe(self, app: App) -> float | None:
        """Seconds until a fresh task sent now comes back: the time to recover."""
        started = time.monotonic()
        deadline = started + self.profile.recover_timeout
        while time.monotonic() < deadline:
            try:
                result = await asyncio.wait_for(app.send_task("chaos.probe", queue=PROBE_QUEUE), 5)
                await result.get(timeout=max(0.1, min(10.0, deadline - time.monotonic())))
                return time.monotonic() - started
            except Exception as exc:  # anything but an answer: again
                log.debug("probe: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(0.2)
        return None

    # --- the count ------------------------------------------------------------------------------
    async def _drain(self, app: App, deadline: float) -> bool:
        """Wait until every plain task and canvas has succeeded, or the deadline passes."""
        pending = list(self.plain)
        canvases = list(self.canvases)
        while True:
            pending = await self._unfinished(app, pending)
            canvases = [c for c in canvases if not await self._canvas_done(c)]
            if not pending and not canvases:
                return True
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        ran = collections.Counter(self._ledger())
        self.tally.lost_count = len(pending)
        for tid in pending[:10]:
            state = await self._state(app, tid)
            self.tally.lost.append(f"{tid} {state} ran={ran[tid]}")
        for c in canvases:
            states = [f"{n} {await self._state(app, n)} ran={ran[n]}" for n in c.nodes]
            self.tally.stuck.append(f"{c.kind} {await self._canvas_state(c)}: {', '.join(states)}")
        return False

    async def _state(self, app: App, tid: str) -> str:
        try:
            return await app.AsyncResult(tid).state()
        except Exception as exc:  # the backend may be down now
            return f"unknown ({type(exc).__name__})"

    async def _unfinished(self, app: App, ids: list[str]) -> list[str]:
        left: list[str] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            states = await asyncio.gather(*(self._state(app, tid) for tid in chunk))
            left += [tid for tid, state in zip(chunk, states, strict=True) if state != "SUCCESS"]
        return left

    async def _canvas_done(self, c: Canvas) -> bool:
        return await self._canvas_state(c) == "SUCCESS"

    async def _canvas_state(self, c: Canvas) -> str:
        """SUCCESS with the right value, or what is wrong."""
        try:
            parts = c.handle.results if c.kind == "group" else [c.handle]
            states = [await r.state() for r in parts]
            if any(s != "SUCCESS" for s in states):
                return "/".join(states)
            value = await c.handle.get(timeout=5)
        except Exception as exc:  # reported, not raised
            return f"error {type(exc).__name__}"
        return "SUCCESS" if value == c.expected else f"wrong value {value!r} != {c.expected!r}"

    def _ledger(self) -> list[str]:
        return self.ledger.read_text().split() if self.ledger.exists() else []

    def _count(self) -> None:
        t, p = self.tally, self.profile
        ran = collections.Counter(self._ledger())
        t.executions = sum(ran.values())
        t.duplicates = sum(n - 1 for n in ran.values() if n > 1)
        t.completed = t.sent - t.lost_count
        whole_fleet = (t.restarts + t.proxy_faults) * p.workers
        t.dup_bound = (t.kills + t.sigstops + whole_fleet) * p.concurrency + self.resent


async def run_broker(broker: str, profile: Profile, faults: tuple[str, ...], base: Path) -> Tally:
    if broker in ("redis", "amqp") and shutil.which("redis-server") is None:
        return Tally(broker, skipped="redis-server is not installed")
    if broker == "amqp" and shutil.which(RABBITMQ_SERVER) is None:
        return Tally(broker, skipped="rabbitmq-server is not installed")
    return await Run(broker, profile, faults, base).execute()
