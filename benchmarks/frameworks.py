"""The frameworks the harness drives: their interpreter, task module and worker command line.

Every framework gets the same workloads; the worker settings below are each framework's usual
way to run that kind of work, at the same concurrency (100 coroutines / threads for I/O, one
process per core for CPU-bound work).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH_PY = Path(sys.executable)
ARQ_PY = ROOT / ".venv-bench" / "arq" / "bin" / "python"
#: Oban for Python needs Python >= 3.12: its own venv, made with python3.12 (see the Makefile)
OBAN_PY = ROOT / ".venv-bench" / "oban" / "bin" / "python"
CORES = os.cpu_count() or 1
CONCURRENCY = 100

WORKLOADS = ("enqueue", "drain", "latency", "io", "cpu", "chord")

#: workloads whose worker starts before the producer (drain starts it after the enqueue)
PRESTART = frozenset({"latency", "io", "cpu", "chord"})


def _script(py: Path, name: str) -> str:
    return str(py.parent / name)


def aiotask_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [
        _script(py, "aiotask"),
        "worker",
        "-A",
        "benchmarks.workloads.aiotask_app:app",
        "-c",
        str(CONCURRENCY),
        "-P",
        str(CORES),
        "--prefetch",
        str(2 * CONCURRENCY),
        "-l",
        "WARNING",
    ]


def celery_worker(py: Path, workload: str, ns: str) -> list[str]:
    if workload == "io":
        pool = ["-P", "threads", "-c", str(CONCURRENCY)]
    else:
        pool = ["-P", "prefork", "-c", str(CORES)]
    return [
        str(py),
        "-m",
        "celery",
        "-A",
        "benchmarks.workloads.celery_app",
        "worker",
        *pool,
        "-Q",
        ns,
        "-l",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]


def taskiq_worker(py: Path, workload: str, ns: str) -> list[str]:
    argv = [
        _script(py, "taskiq"),
        "worker",
        "benchmarks.workloads.taskiq_app:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(CONCURRENCY),
        "--log-level",
        "WARNING",
    ]
    if workload == "cpu":
        argv += ["--use-process-pool", "--max-process-pool-processes", str(CORES)]
    return argv


def arq_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [_script(py, "arq"), "benchmarks.workloads.arq_app.WorkerSettings"]


def saq_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [_script(py, "saq"), "benchmarks.workloads.saq_app.settings", "--workers", "1", "-q"]


def streaq_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [_script(py, "streaq"), "run", "benchmarks.workloads.streaq_app:worker"]


def procrastinate_worker(py: Path, workload: str, ns: str) -> list[str]:
    from benchmarks.common import pg_schema

    return [
        *(_script(py, "procrastinate"), "--log-level", "warning"),
        *("--app", "benchmarks.workloads.procrastinate_app.app"),
        *("worker", "--concurrency", str(CONCURRENCY), "--queues", pg_schema(ns)),
    ]


def pgqueuer_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [str(py), "-m", "benchmarks.workloads.pgqueuer_app"]


def oban_worker(py: Path, workload: str, ns: str) -> list[str]:
    from benchmarks.common import pg_schema

    return [
        *(_script(py, "oban"), "start", "--queues", f"default:{CONCURRENCY}"),
        *("--prefix", pg_schema(ns), "--log-level", "WARNING"),
        *("--cron-modules", "benchmarks.workloads.oban_app"),
    ]


def floor_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [str(py), "-m", "benchmarks.workloads.floor"]


def floor_amqp_worker(py: Path, workload: str, ns: str) -> list[str]:
    return [str(py), "-m", "benchmarks.workloads.floor_amqp"]


@dataclass(frozen=True)
class Framework:
    key: str
    label: str
    module: str
    worker: Callable[[Path, str, str], list[str]]
    python: Path = BENCH_PY
    broker: str = "redis"
    #: workload -> why it is not run ("n/a ..." or "not yet ...")
    skips: dict[str, str] = field(default_factory=dict)
    setup: str = ""
    #: the packages whose versions the report lists
    distributions: tuple[str, ...] = ()
    #: run the module's `install()` (its tables) before the worker or producer starts
    install: bool = False
    #: RabbitMQ queues and exchanges it declares, as templates of the namespace (`{ns}`): the
    #: harness deletes them by name afterwards, besides those `rabbitmqctl` lists for the namespace
    amqp_queues: tuple[str, ...] = ()
    amqp_exchanges: tuple[str, ...] = ()

    def worker_argv(self, workload: str, ns: str) -> list[str]:
        return self.worker(self.python, workload, ns)


NO_CHORD = "n/a: no chord primitive"
NO_POOL = "n/a: no process pool for sync tasks"
#: the PostgreSQL rows: enqueue, drain and round trip (the issue's comparison)
PG_ONLY = {
    "io": "not run: the PostgreSQL rows cover enqueue, drain and round trip",
    "cpu": "not run: the PostgreSQL rows cover enqueue, drain and round trip",
    "chord": "not run: the PostgreSQL rows cover enqueue, drain and round trip",
}

FRAMEWORKS: dict[str, Framework] = {
    f.key: f
    for f in (
        Framework(
            "aiotask",
            "aiotask",
            "aiotask_app",
            aiotask_worker,
            setup=f"-c {CONCURRENCY} -P {CORES} --prefetch {2 * CONCURRENCY}",
            distributions=("aiotask", "redis", "hiredis", "orjson"),
        ),
        Framework(
            "celery",
            "Celery",
            "celery_app",
            celery_worker,
            setup=f"prefork -c {CORES} (I/O: threads -c {CONCURRENCY}), defaults otherwise",
            distributions=("celery", "kombu", "redis"),
        ),
        Framework(
            "taskiq",
            "taskiq",
            "taskiq_app",
            taskiq_worker,
            skips={"chord": NO_CHORD},
            setup=f"RedisStreamBroker, --workers 1 --max-async-tasks {CONCURRENCY}"
            f" (CPU: --use-process-pool {CORES})",
            distributions=("taskiq", "taskiq-redis", "redis"),
        ),
        Framework(
            "arq",
            "arq",
            "arq_app",
            arq_worker,
            python=ARQ_PY,
            skips={"chord": NO_CHORD, "cpu": NO_POOL},
            setup=f"max_jobs={CONCURRENCY}, poll_delay 10 ms (default 500 ms); own venv (redis<6)",
            distributions=("arq", "redis"),
        ),
        Framework(
            "saq",
            "SAQ",
            "saq_app",
            saq_worker,
            skips={"chord": NO_CHORD, "cpu": NO_POOL},
            setup=f"concurrency={CONCURRENCY}, --workers 1",
            distributions=("saq", "redis"),
        ),
        Framework(
            "streaq",
            "streaq",
            "streaq_app",
            streaq_worker,
            skips={"chord": NO_CHORD, "cpu": NO_POOL},
            setup=f"concurrency={CONCURRENCY}, --workers 1",
            distributions=("streaq", "coredis"),
        ),
        Framework(
            "aiotask-amqp",
            "aiotask (RabbitMQ)",
            "aiotask_app",
            aiotask_worker,
            broker="amqp",
            setup="as aiotask; RabbitMQ broker, Redis results",
            distributions=("aiotask", "redis", "hiredis", "orjson"),
        ),
        Framework(
            "aiotask-sqlite",
            "aiotask (SQLite)",
            "aiotask_app",
            aiotask_worker,
            broker="sqlite",
            setup="as aiotask; the embedded default: one SQLite file (WAL) for messages and"
            " results, no server",
            distributions=("aiotask", "orjson"),
        ),
        Framework(
            "aiotask-postgres",
            "aiotask (PostgreSQL)",
            "aiotask_app",
            aiotask_worker,
            broker="postgres",
            skips=PG_ONLY,
            setup="as aiotask; PostgreSQL broker and results (one schema per run)",
            distributions=("aiotask", "asyncpg", "orjson"),
        ),
        Framework(
            "procrastinate",
            "procrastinate",
            "procrastinate_app",
            procrastinate_worker,
            broker="postgres",
            skips=PG_ONLY,
            install=True,
            setup=f"worker --concurrency {CONCURRENCY}, LISTEN/NOTIFY on (default); no"
            " results: the round trip polls the job's status every 1 ms",
            distributions=("procrastinate", "psycopg", "psycopg-pool"),
        ),
        Framework(
            "pgqueuer",
            "PgQueuer",
            "pgqueuer_app",
            pgqueuer_worker,
            broker="postgres",
            skips=PG_ONLY,
            install=True,
            setup=f"pgqueuer.run, batch_size={CONCURRENCY}, max_concurrent_tasks="
            f"{2 * CONCURRENCY}; round trip: its CompletionWatcher (LISTEN), debounce 1 ms"
            " (default 50 ms)",
            distributions=("pgqueuer", "asyncpg"),
        ),
        Framework(
            "oban",
            "Oban (Python)",
            "oban_app",
            oban_worker,
            python=OBAN_PY,
            broker="postgres",
            skips=PG_ONLY,
            install=True,
            setup=f"oban start --queues default:{CONCURRENCY}; no results: the round trip"
            " polls the job's state every 1 ms; own venv (needs Python >= 3.12)",
            distributions=("oban", "psycopg", "psycopg-pool"),
        ),
        Framework(
            "celery-amqp",
            "Celery (RabbitMQ)",
            "celery_app",
            celery_worker,
            broker="amqp",
            setup="as Celery; RabbitMQ broker, Redis results",
            distributions=("celery", "kombu", "redis"),
        ),
        Framework(
            "taskiq-amqp",
            "taskiq (RabbitMQ)",
            "taskiq_app",
            taskiq_worker,
            broker="amqp",
            skips={"chord": NO_CHORD},
            setup="as taskiq; taskiq-aio-pika AioPikaBroker on a classic queue (its default is"
            f" quorum), qos {2 * CONCURRENCY} (default 10), Redis results",
            distributions=("taskiq", "taskiq-aio-pika", "aio-pika", "taskiq-redis", "redis"),
            amqp_queues=("{ns}", "{ns}.dead_letter"),
            amqp_exchanges=("{ns}",),
        ),
        Framework(
            "floor",
            "floor (raw redis-py)",
            "floor",
            floor_worker,
            skips={
                "chord": NO_CHORD,
                "cpu": "n/a: the floor covers enqueue, drain and round trip",
                "io": "n/a: the floor covers enqueue, drain and round trip",
            },
            setup="XADD / XREADGROUP + SET + PUBLISH + XACK, nothing else",
            distributions=("redis", "hiredis"),
        ),
        Framework(
            "floor-amqp",
            "floor (raw aiormq)",
            "floor_amqp",
            floor_amqp_worker,
            broker="amqp",
            skips={
                "chord": NO_CHORD,
                "cpu": "n/a: the floor covers enqueue, drain and round trip",
                "io": "n/a: the floor covers enqueue, drain and round trip",
            },
            setup="confirmed persistent basic.publish / basic.consume + SET + PUBLISH +"
            " basic.ack (multiple), nothing else",
            distributions=("aiormq", "pamqp", "redis", "hiredis"),
        ),
    )
}

SMOKE_FRAMEWORKS = (
    "aiotask",
    "aiotask-sqlite",
    "celery",
    "taskiq",
    "arq",
    "saq",
    "streaq",
    "floor",
)
#: `--postgres`: aiotask on PostgreSQL beside the PostgreSQL queues, and aiotask on Redis for
#: the round-trip reference of the same run
POSTGRES_FRAMEWORKS = ("aiotask-postgres", "procrastinate", "pgqueuer", "oban", "aiotask")
POSTGRES_WORKLOADS = ("enqueue", "drain", "latency")
#: the full run (docs/benchmarks.md's table) leaves the PostgreSQL rows to `--postgres`
FULL_FRAMEWORKS = tuple(k for k in FRAMEWORKS if k not in POSTGRES_FRAMEWORKS[:4])
