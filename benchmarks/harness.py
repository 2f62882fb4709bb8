"""aiotask vs Celery, asyncio peers and a raw redis-py floor, side by side.

    python -m benchmarks.harness --smoke   # small N, about 3 minutes, prints the table
    python -m benchmarks.harness --full    # also writes docs/benchmarks.md and docs/benchmarks.png
    python -m benchmarks.harness --smoke --postgres  # aiotask on PostgreSQL vs procrastinate,
                                                     # PgQueuer, Oban (docs/benchmarks.md)

Run it from .venv-bench (`make bench-smoke` / `make bench` build it). Each measurement gets fresh
processes - a producer (`python -m benchmarks.producer`) and, where the workload needs one, a
worker started with the framework's own CLI - and a unique key namespace, whose keys are deleted
afterwards with SCAN MATCH (never FLUSHDB: the Redis is shared); on PostgreSQL, a schema named
after the namespace, dropped afterwards. Repeats are interleaved across
frameworks, and every figure is the median with the min-max range.

--smoke exits non-zero if a workload errors, or if, in the same run (rules in benchmarks/gate.py):
- aiotask is slower than Celery on drain or on p50 round-trip latency (a ratio);
- aiotask (SQLite)'s p50 round trip is over 3x aiotask (Redis)'s (a ratio, generous for a noisy
  shared machine: the target is <= 2 ms and within 3x);
- an aiotask worker idles above its row's RSS bound (its process tree: 33.5 MiB on SQLite, 39
  on Redis, 42 on RabbitMQ; measured 27.5-36, the rest is margin). The only absolute figure: memory
  does not vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from benchmarks.common import (
    AMQP_ENV,
    BROKER_ENV,
    CONCURRENCY_ENV,
    DEFAULT_POSTGRES,
    NS_ENV,
    POSTGRES_ENV,
    REDIS_ENV,
    pg_schema,
)
from benchmarks.frameworks import (
    CONCURRENCY,
    FRAMEWORKS,
    FULL_FRAMEWORKS,
    POSTGRES_FRAMEWORKS,
    POSTGRES_WORKLOADS,
    PRESTART,
    ROOT,
    SMOKE_FRAMEWORKS,
    WORKLOADS,
    Framework,
)
from benchmarks.gate import gate

RESULTS = ROOT / "benchmarks" / ".results"
LOGS = RESULTS / "logs"
IDLE_SETTLE_S = 1.5
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Plan:
    mode: str
    frameworks: tuple[str, ...]
    workloads: tuple[str, ...]
    #: workload -> (n, extra producer args)
    sizes: dict[str, dict[str, int]]
    repeats: dict[str, int]
    timeout_s: float
    #: frameworks that get every repeat; the others run once (None: all get every repeat)
    core: tuple[str, ...] | None = None


SMOKE = Plan(
    mode="smoke",
    frameworks=SMOKE_FRAMEWORKS,
    workloads=WORKLOADS,
    sizes={
        "enqueue": {"n": 2000, "n_one": 300, "batch": 500},
        "drain": {"n": 2000, "batch": 500},
        "latency": {"n": 150, "budget": 3},
        "io": {"n": 600, "batch": 600},
        "cpu": {"n": 120, "batch": 120},
        "chord": {"n": 200},
    },
    repeats={"drain": 3, "latency": 3},
    timeout_s=60,
    core=("aiotask", "celery", "floor"),
)

FULL = Plan(
    mode="full",
    frameworks=FULL_FRAMEWORKS,
    workloads=WORKLOADS,
    sizes={
        "enqueue": {"n": 20000, "n_one": 2000, "batch": 1000},
        "drain": {"n": 20000, "batch": 1000},
        "latency": {"n": 1000, "budget": 20},
        "io": {"n": 5000, "batch": 1000},
        "cpu": {"n": 300, "batch": 300},
        "chord": {"n": 1000},
    },
    repeats=dict.fromkeys(WORKLOADS, 3),
    timeout_s=300,
)


@dataclass
class Measurement:
    framework: str
    workload: str
    repeat: int
    ns: str
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: the producer's clock marks (perf_counter: first and last completion of a drain)
    marks: dict[str, float] = field(default_factory=dict)


class MeasurementError(Exception):
    pass


# ---------------------------------------------------------------- processes


def sqlite_file(ns: str) -> Path:
    """The SQLite file of one measurement of aiotask (SQLite), removed after it."""
    return LOGS / f"{ns}.db"


async def spawn(argv: list[str], env: dict[str, str], log: Path, pipes: bool) -> Any:
    """Start a process in its own session (so its whole group can be stopped by id)."""
    logf = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else logf,
            stderr=logf,
            start_new_session=True,
        )
    finally:
        logf.close()


async def stop(proc: Any) -> None:
    """SIGTERM the process (warm shutdown), then SIGKILL its whole group after a grace period."""
    if proc is None:
        return
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    # whatever is left in the group (pool children, a stuck main process)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process and all its descendants, in MiB."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss = pss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------- cleanup


async def cleanup_redis(redis_url: str, ns: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in r.scan_iter(match=f"*{ns}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await r.unlink(*batch)
                batch = []
        if batch:
            deleted += await r.unlink(*batch)
    finally:
        await r.aclose()
    return deleted


def _rabbit_names(kind: str, ns: str) -> list[str]:
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", f"list_{kind}", "name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if ns in line]


async def cleanup_amqp(
    amqp_url: str,
    ns: str,
    known_queues: tuple[str, ...] = (),
    known_exchanges: tuple[str, ...] = (),
) -> int:
    """Delete, by name, the namespace's queues and exchanges: those `rabbitmqctl` lists and
    those the framework is known to declare (templates of `{ns}`), never any other."""
    import aio_pika

    queues = await asyncio.to_thread(_rabbit_names, "queues", ns)
    exchanges = await asyncio.to_thread(_rabbit_names, "exchanges", ns)
    queues += [q.format(ns=ns) for q in known_queues if q.format(ns=ns) not in queues]
    exchanges += [e.format(ns=ns) for e in known_exchanges if e.format(ns=ns) not in exchanges]
    queues = [q for q in queues if ns in q]
    exchanges = [e for e in exchanges if ns in e]
    if not queues and not exchanges:
        return 0
    conn = await aio_pika.connect(amqp_url)
    try:
        for name in queues:
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.queue_delete(name)
        for name in exchanges:
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.exchange_delete(name)
    finally:
        await conn.close()
    return len(queues) + len(exchanges)


async def cleanup_postgres(postgres_url: str, ns: str) -> int:
    """Drop the measurement's schemas: aiotask's (named `ns`) and the peers' (`pg_schema`)."""
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        dropped = 0
        for schema in {ns, pg_schema(ns)}:
            if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
                await conn.execute('DROP SCHEMA "{}" CASCADE'.format(schema.replace('"', "")))
                dropped += 1
        return dropped
    finally:
        await conn.close()


async def install(fw: Framework, env: dict[str, str], log: Path) -> None:
    """Run the task module's `install()` (its tables), as the framework's own setup step."""
    code = (
        "import asyncio, importlib\n"
        f"asyncio.run(importlib.import_module('benchmarks.workloads.{fw.module}').install())\n"
    )
    proc = await spawn([str(fw.python), "-c", code], env, log, False)
    try:
        rc = await asyncio.wait_for(proc.wait(), 120)
    finally:
        await stop(proc)
    if rc != 0:
        raise MeasurementError(f"installing its tables failed ({rc})")


# ---------------------------------------------------------------- one measurement


class Runner:
    def __init__(
        self, plan: Plan, redis_url: str, amqp_url: str, postgres_url: str = DEFAULT_POSTGRES
    ) -> None:
        self.plan = plan
        self.redis_url = redis_url
        self.amqp_url = amqp_url
        self.postgres_url = postgres_url
        LOGS.mkdir(parents=True, exist_ok=True)

    def env(self, fw: Framework, ns: str) -> dict[str, str]:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("AIOTASK_", "BENCH_")):
                del env[k]
        broker = self.amqp_url if fw.broker == "amqp" else self.redis_url
        backend = self.redis_url
        if fw.broker == "sqlite":
            broker = backend = f"sqlite:///{sqlite_file(ns)}"
        if fw.broker == "postgres":
            broker = backend = self.postgres_url
            env["OBAN_DSN"] = self.postgres_url  # `oban start` takes its DSN from there
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                NS_ENV: ns,
                REDIS_ENV: self.redis_url,
                AMQP_ENV: self.amqp_url,
                POSTGRES_ENV: self.postgres_url,
                BROKER_ENV: fw.broker,
                CONCURRENCY_ENV: str(CONCURRENCY),
                "AIOTASK_BROKER_URL": broker,
                "AIOTASK_RESULT_BACKEND": backend,
                "AIOTASK_KEY_PREFIX": ns,
            }
        )
        return env

    async def measure(self, fw: Framework, workload: str, repeat: int) -> Measurement:
        ns = f"aiotbench-{uuid.uuid4().hex[:12]}"
        m = Measurement(fw.key, workload, repeat, ns)
        if workload in fw.skips:
            m.skipped = fw.skips[workload]
            return m
        t0 = time.monotonic()
        worker_log = LOGS / f"{ns}.worker.log"
        producer_log = LOGS / f"{ns}.producer.log"
        procs: dict[str, Any] = {}
        try:
            await self._run(fw, workload, ns, m, procs, worker_log, producer_log)
        except MeasurementError as exc:
            m.error = str(exc)
        except Exception as exc:
            m.error = f"{type(exc).__name__}: {exc}"
        finally:
            await stop(procs.get("producer"))
            await stop(procs.get("worker"))
            for path in sqlite_file(ns).parent.glob(f"{sqlite_file(ns).name}*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            try:
                await cleanup_redis(self.redis_url, ns)
                if fw.broker == "amqp":
                    await cleanup_amqp(self.amqp_url, ns, fw.amqp_queues, fw.amqp_exchanges)
                if fw.broker == "postgres":
                    await cleanup_postgres(self.postgres_url, ns)
            except Exception as exc:
                m.notes["cleanup"] = f"{type(exc).__name__}: {exc}"
        if m.error:
            tail = log_tail(worker_log) or log_tail(producer_log)
            if tail:
                m.error += "\n" + tail
        else:
            worker_log.unlink(missing_ok=True)
            producer_log.unlink(missing_ok=True)
        m.seconds = time.monotonic() - t0
        return m

    async def _run(
        self,
        fw: Framework,
        workload: str,
        ns: str,
        m: Measurement,
        procs: dict[str, Any],
        worker_log: Path,
        producer_log: Path,
    ) -> None:
        env = self.env(fw, ns)
        size = self.plan.sizes[workload]
        deadline = time.monotonic() + self.plan.timeout_s
        if fw.install:
            await install(fw, env, worker_log)
        if workload in PRESTART:
            procs["worker"] = await spawn(fw.worker_argv(workload, ns), env, worker_log, False)
        argv = [str(fw.python), "-m", "benchmarks.producer", fw.module, workload]
        argv += ["--n", str(size["n"]), "--timeout", str(self.plan.timeout_s)]
        if "n_one" in size:
            argv += ["--n-one", str(size["n_one"])]
        if "batch" in size:
            argv += ["--batch", str(size["batch"])]
        if "budget" in size:
            argv += ["--budget", str(size["budget"])]
        producer = procs["producer"] = await spawn(argv, env, producer_log, True)
        while True:
            event = await self._next_event(producer, deadline)
            if event is None:
                break
            worker = procs.get("worker")
            if worker is not None and worker.returncode is not None:
                raise MeasurementError(f"worker exited early with {worker.returncode}")
            kind = event.pop("event")
            if kind == "enqueued":
                procs["worker"] = await spawn(fw.worker_argv(workload, ns), env, worker_log, False)
                await self._go(producer)
            elif kind == "warm":
                await asyncio.sleep(IDLE_SETTLE_S)
                if worker is not None:
                    rss, pss = tree_memory_mib(worker.pid)
                    m.values["idle_rss_mib"] = rss
                    m.values["idle_pss_mib"] = pss
                await self._go(producer)
            elif kind == "result":
                for k, v in event.items():
                    if k.startswith("mark_"):
                        m.marks[k] = float(v)
                    elif isinstance(v, int | float):
                        m.values[k] = float(v)
                    else:
                        m.notes[k] = str(v)
            elif kind == "skipped":
                m.skipped = str(event.get("reason"))
            elif kind == "error":
                raise MeasurementError(str(event.get("error")))
        rc = await asyncio.wait_for(producer.wait(), max(1.0, deadline - time.monotonic()))
        if rc != 0:
            raise MeasurementError(f"producer exited with {rc}")
        worker = procs.get("worker")
        if worker is not None and worker.returncode is not None:
            raise MeasurementError(f"worker exited early with {worker.returncode}")

    async def _next_event(self, producer: Any, deadline: float) -> dict[str, Any] | None:
        """The producer's next `@@{json}` line; None at its end of output."""
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                line = await asyncio.wait_for(producer.stdout.readline(), left)
            except TimeoutError:
                raise MeasurementError(f"timed out after {self.plan.timeout_s:.0f} s") from None
            if not line:
                return None
            if line.startswith(b"@@"):
                event: dict[str, Any] = json.loads(line[2:])
                return event

    @staticmethod
    async def _go(producer: Any) -> None:
        producer.stdin.write(b"go\n")
        await producer.stdin.drain()


# ---------------------------------------------------------------- availability


def check_available(fw: Framework) -> str | None:
    """None if the framework's interpreter can import its task module, else why not."""
    if not fw.python.exists():
        return f"no interpreter at {fw.python} (run `make bench` to build .venv-bench)"
    # with its broker selected, so a module that imports a broker's client lazily is checked too
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{BROKER_ENV: fw.broker})
    if fw.broker == "sqlite":  # the module reads its file's URL; importing it opens nothing
        env["AIOTASK_BROKER_URL"] = f"sqlite:///{sqlite_file('check-available')}"
    code = f"import benchmarks.workloads.{fw.module}"
    try:
        proc = subprocess.run(
            [str(fw.python), "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "importing its task module timed out"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"cannot import benchmarks.workloads.{fw.module}: {last}"
    if fw.module == "aiotask_app":
        script = fw.python.parent / "aiotask"
        if not script.exists():
            return f"no `aiotask` console script at {script}"
    return None


def compile_bytecode(pythons: set[Path], root: Path = ROOT) -> None:
    """Write aiotask's and the workloads' bytecode, as pip does for the peers' packages.

    aiotask is installed editable from this tree: where nothing wrote its bytecode (a fresh
    checkout run with PYTHONDONTWRITEBYTECODE set) every worker start compiled its ~190 modules
    from source, which left 1.3 MiB more in the idle worker's C heap than an installed aiotask.
    """
    for py in sorted(pythons):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            argv = [str(py), "-m", "compileall", "-q", "aiotask", "benchmarks"]
            subprocess.run(argv, cwd=root, capture_output=True, timeout=300, check=False)


# ---------------------------------------------------------------- main


def aggregate(measurements: list[Measurement]) -> dict[str, dict[str, dict[str, float]]]:
    """framework -> metric -> {median, min, max, n}"""
    values: dict[str, dict[str, list[float]]] = {}
    for m in measurements:
        if m.error or m.skipped:
            continue
        for k, v in m.values.items():
            if v == v:  # not NaN
                values.setdefault(m.framework, {}).setdefault(k, []).append(v)
    return {
        fw: {
            k: {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}
            for k, vs in metrics.items()
        }
        for fw, metrics in values.items()
    }


async def run(plan: Plan, args: argparse.Namespace) -> int:
    from benchmarks import report

    frameworks = [FRAMEWORKS[k] for k in plan.frameworks]
    unavailable: dict[str, str] = {}
    for fw in frameworks:
        why = check_available(fw)
        if why:
            unavailable[fw.key] = why
            print(f"[bench] {fw.label}: unavailable - {why}", flush=True)
    runnable = [fw for fw in frameworks if fw.key not in unavailable]
    compile_bytecode({fw.python for fw in runnable})
    runner = Runner(plan, args.redis_url, args.amqp_url, args.postgres_url)
    cpu_calibration = report.calibrate_cpu()
    measurements: list[Measurement] = []
    started = time.monotonic()
    max_rep = max(plan.repeats.get(w, 1) for w in plan.workloads)
    for rep in range(max_rep):
        for workload in plan.workloads:
            if rep >= plan.repeats.get(workload, 1):
                continue
            # rotate the order each repeat, so no framework always runs first or last
            order = (
                runnable[rep % max(1, len(runnable)) :] + runnable[: rep % max(1, len(runnable))]
            )
            for fw in order:
                if rep > 0 and plan.core is not None and fw.key not in plan.core:
                    continue
                m = await runner.measure(fw, workload, rep)
                measurements.append(m)
                report.print_progress(m, time.monotonic() - started)
    agg = aggregate(measurements)
    errors = [m for m in measurements if m.error]
    failures = gate(agg, plan.frameworks)
    if "aiotask" in unavailable:
        failures.insert(0, f"aiotask unavailable: {unavailable['aiotask']}")
    machine = report.machine_info(args.redis_url, args.amqp_url, frameworks)
    doc: dict[str, Any] = {
        "mode": plan.mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": time.monotonic() - started,
        "plan": asdict(plan),
        "machine": machine,
        "cpu_calibration": cpu_calibration,
        "unavailable": unavailable,
        "frameworks": {fw.key: {"label": fw.label, "setup": fw.setup} for fw in frameworks},
        "aggregate": agg,
        "measurements": [asdict(m) for m in measurements],
        "gate_failures": failures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{plan.mode}.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    table = report.markdown_tables(doc)
    print("\n" + table)
    if plan.mode == "full" and not args.no_docs:
        report.write_docs(doc, table)
        print(f"[bench] wrote {report.DOC} and {report.CHART}")
    print(f"[bench] raw results: {out.relative_to(ROOT)}")
    for m in errors:
        print(f"[bench] ERROR {m.framework}/{m.workload}#{m.repeat}: {m.error}", file=sys.stderr)
    for f in failures:
        print(f"[bench] GATE {f}", file=sys.stderr)
    return 1 if errors or failures else 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--smoke", action="store_true", help="small N, about 3 min; prints the table")
    mode.add_argument("--full", action="store_true", help="also writes docs/benchmarks.md + PNG")
    mode.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite docs/benchmarks.md and its chart from a results file of a --full run",
    )
    p.add_argument("--frameworks", help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--repeats", type=int, help="override the number of repeats")
    p.add_argument("--no-docs", action="store_true", help="--full without touching docs/")

    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    p.add_argument(
        "--postgres",
        action="store_true",
        help="aiotask on PostgreSQL vs procrastinate, PgQueuer, Oban (and aiotask on Redis):"
        " enqueue, drain, round trip (with --smoke or --full; --full then writes no docs)",
    )
    return p.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = SMOKE if args.smoke else FULL
    changes: dict[str, Any] = {}
    if args.postgres:
        changes["frameworks"] = POSTGRES_FRAMEWORKS
        changes["workloads"] = POSTGRES_WORKLOADS
        changes["core"] = None  # every row gets every repeat
        changes["repeats"] = dict.fromkeys(POSTGRES_WORKLOADS, 3)
        changes["timeout_s"] = max(plan.timeout_s, 180)  # procrastinate drains slowly
        args.no_docs = True
    if args.frameworks:
        keys = tuple(k.strip() for k in args.frameworks.split(",") if k.strip())
        unknown = [k for k in keys if k not in FRAMEWORKS]
        if unknown:
            raise SystemExit(f"unknown frameworks {unknown}; known: {', '.join(FRAMEWORKS)}")
        changes["frameworks"] = keys
    if args.workloads:
        wls = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
        unknown = [w for w in wls if w not in WORKLOADS]
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
        changes["workloads"] = wls
    if args.repeats:
        changes["repeats"] = dict.fromkeys(WORKLOADS, args.repeats)
    return Plan(**{**asdict(plan), **changes})


def render(path: str) -> int:
    from benchmarks import report

    doc = json.loads(Path(path).read_text())
    table = report.markdown_tables(doc)
    print(table)
    report.write_docs(doc, table)
    print(f"[bench] wrote {report.DOC} and {report.CHART}")
    return 0


async def run_guarded(plan: Plan, args: argparse.Namespace) -> int:
    """run(), cancelled cleanly on SIGTERM so every spawned process group is still stopped."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run(plan, args)
    except asyncio.CancelledError:
        print("[bench] stopped by a signal; spawned processes were stopped", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.render:
        return render(args.render)
    for url in (args.redis_url, args.amqp_url, args.postgres_url):
        host = urlparse(url).hostname or ""
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise SystemExit(f"refusing a server that is not on this machine: {url}")
    return asyncio.run(run_guarded(plan_from(args), args))


if __name__ == "__main__":
    raise SystemExit(main())
