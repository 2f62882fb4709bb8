"""Tables, machine info, the docs page and the chart for the harness."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import CPU_N, SLEEP_S, spin
from benchmarks.frameworks import CONCURRENCY, CORES, FRAMEWORKS, ROOT, Framework

if TYPE_CHECKING:
    from benchmarks.harness import Measurement

DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"

#: metric -> (label, unit, +1 if higher is better else -1)
METRICS: dict[str, tuple[str, str, int]] = {
    "enqueue_one": ("enqueue, one at a time", "tasks/s", 1),
    "enqueue_batch": ("enqueue, batched", "tasks/s", 1),
    "drain": ("drain, no-op tasks", "tasks/s", 1),
    "p50_ms": ("round trip p50", "ms", -1),
    "p90_ms": ("round trip p90", "ms", -1),
    "p99_ms": ("round trip p99", "ms", -1),
    "io_pct": (f"I/O-bound, {SLEEP_S * 1000:.0f} ms sleeps at c={CONCURRENCY}", "% of ideal", 1),
    "cpu": ("CPU-bound sync, process pool", "tasks/s", 1),
    "chord_s": ("chord, end to end", "s", -1),
    "idle_rss_mib": ("worker idle RSS (process tree)", "MiB", -1),
    "idle_pss_mib": ("worker idle PSS (process tree)", "MiB", -1),
}

#: which workload produces each metric (for skip / error cells)
METRIC_WORKLOAD = {
    "enqueue_one": "enqueue",
    "enqueue_batch": "enqueue",
    "drain": "drain",
    "p50_ms": "latency",
    "p90_ms": "latency",
    "p99_ms": "latency",
    "io_pct": "io",
    "cpu": "cpu",
    "chord_s": "chord",
    "idle_rss_mib": "latency",
    "idle_pss_mib": "latency",
}

#: en dash and multiplication sign, escaped for the linter
DASH = "\u2013"
TIMES = "\u00d7"
ARROW = "\u2192"

CHART_METRICS = ("drain", "enqueue_batch", "p50_ms", "io_pct", "cpu", "idle_rss_mib")


def calibrate_cpu() -> dict[str, float]:
    """Time the CPU-bound body in this process: the ideal pool rate is cores / that time."""
    best = min(_timed_spin() for _ in range(5))
    return {"task_s": best, "ideal_tasks_per_s": CORES / best, "cpu_n": float(CPU_N)}


def _timed_spin() -> float:
    t0 = time.perf_counter()
    spin(CPU_N)
    return time.perf_counter() - t0


def print_progress(m: Measurement, elapsed: float) -> None:
    if m.skipped:
        return
    if m.error:
        status = "ERROR " + m.error.splitlines()[0]
    else:
        status = ", ".join(f"{k}={_num(v)}" for k, v in m.values.items())
    print(
        f"[bench {elapsed:6.1f}s] {m.framework:<13} {m.workload:<8} #{m.repeat}"
        f" ({m.seconds:4.1f}s) {status}",
        flush=True,
    )


def _num(v: float) -> str:
    if v != v:
        return "nan"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# ---------------------------------------------------------------- machine


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _redis_version(url: str) -> str:
    import redis

    try:
        r = redis.Redis.from_url(url)
        v = str(r.info("server").get("redis_version", "?"))
        r.close()
        return v
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _rabbitmq_version() -> str:
    out = _run(["rabbitmqctl", "-q", "version"])
    return out.splitlines()[-1] if out else "unknown"


def _versions(fw: Framework) -> str:
    code = (
        "import importlib.metadata as m\n"
        "out = []\n"
        f"for n in {list(fw.distributions)!r}:\n"
        "    try:\n"
        "        out.append(n + ' ' + m.version(n))\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(', '.join(out))\n"
    )
    return _run([str(fw.python), "-c", code])


def machine_info(redis_url: str, amqp_url: str, frameworks: list[Framework]) -> dict[str, Any]:
    packages: dict[str, str] = {}
    on_redis = {fw.distributions for fw in frameworks if fw.broker == "redis"}
    for fw in frameworks:
        # a RabbitMQ variant is listed only where its packages differ from its Redis sibling's
        if fw.broker != "redis" and fw.distributions in on_redis:
            continue
        if fw.python.exists() and fw.distributions:
            packages[fw.key] = _versions(fw)
    return {
        "cpu": _cpu_model(),
        "cores": CORES,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "redis_server": _redis_version(redis_url),
        "rabbitmq_server": _rabbitmq_version()
        if any(f.broker == "amqp" for f in frameworks)
        else "not used",
        "packages": packages,
    }


# ---------------------------------------------------------------- tables


def _columns(doc: dict[str, Any]) -> list[str]:
    return [k for k in doc["plan"]["frameworks"] if k in FRAMEWORKS]


def _cell(doc: dict[str, Any], fw: str, metric: str) -> str:
    agg = doc["aggregate"].get(fw, {}).get(metric)
    if agg:
        med, lo, hi = agg["median"], agg["min"], agg["max"]
        if agg["n"] > 1:
            return f"{_num(med)} ({_num(lo)}{DASH}{_num(hi)})"
        return _num(med)
    if fw in doc["unavailable"]:
        return "unavailable"
    workload = METRIC_WORKLOAD[metric]
    if workload not in doc["plan"]["workloads"]:
        return DASH
    for m in doc["measurements"]:
        if m["framework"] == fw and m["workload"] == workload:
            if m["skipped"]:
                return m["skipped"].split(":")[0]
            if m["error"]:
                return "error"
    return DASH


def _base(peer: str) -> str:
    """The aiotask column a peer is compared with: same broker, like for like."""
    broker = FRAMEWORKS[peer].broker
    return {"amqp": "aiotask-amqp", "postgres": "aiotask-postgres"}.get(broker, "aiotask")


def _ratio(doc: dict[str, Any], peer: str, metric: str) -> str:
    a = doc["aggregate"].get(_base(peer), {}).get(metric)
    p = doc["aggregate"].get(peer, {}).get(metric)
    if not a or not p or not p["median"]:
        return DASH
    return f"{a['median'] / p['median']:.2f}"


def markdown_tables(doc: dict[str, Any]) -> str:
    cols = _columns(doc)
    labels = [FRAMEWORKS[c].label for c in cols]
    lines = [
        "| workload | unit | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for metric, (label, unit, better) in METRICS.items():
        arrow = "↑" if better > 0 else "↓"
        cells = [_cell(doc, c, metric) for c in cols]
        lines.append(f"| {label} | {unit} {arrow} | " + " | ".join(cells) + " |")
    peers = [c for c in cols if not c.startswith("aiotask") and _base(c) in cols]
    if peers:
        heads = [
            FRAMEWORKS[p].label
            + (f" vs {FRAMEWORKS[_base(p)].label}" if _base(p) != "aiotask" else "")
            for p in peers
        ]
        lines += [
            "",
            "Ratios aiotask / peer (medians; a RabbitMQ or PostgreSQL peer is compared with"
            " aiotask on the same broker). ↑ rows: above 1 means aiotask is better; ↓ rows:"
            " below 1 means aiotask is better.",
            "",
            "| workload | " + " | ".join(heads) + " |",
            "|---|" + "---:|" * len(peers),
        ]
        for metric, (label, _unit, better) in METRICS.items():
            arrow = "↑" if better > 0 else "↓"
            cells = [_ratio(doc, p, metric) for p in peers]
            lines.append(f"| {label} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- docs + chart


def write_chart(doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(doc)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, metric in zip(axes.flat, CHART_METRICS, strict=True):
        label, unit, better = METRICS[metric]
        names, meds, lo, hi, colors = [], [], [], [], []
        for c in cols:
            agg = doc["aggregate"].get(c, {}).get(metric)
            if not agg:
                continue
            names.append(FRAMEWORKS[c].label.replace(" (", "\n("))
            meds.append(agg["median"])
            lo.append(agg["median"] - agg["min"])
            hi.append(agg["max"] - agg["median"])
            colors.append(
                "#d62728" if c.startswith("aiotask") else "#7f7f7f" if c == "floor" else "#1f77b4"
            )
        ys = range(len(names))
        ax.barh(ys, meds, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(
            f"{label} ({unit}, {'higher' if better > 0 else 'lower'} is better)", fontsize=9
        )
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    m = doc["machine"]
    fig.suptitle(
        f"aiotask vs Celery and asyncio peers: medians, bars show min{DASH}max over repeats\n"
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, Redis {m['redis_server']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(CHART, dpi=90)
    plt.close(fig)


def _workload_table(sizes: dict[str, dict[str, int]], cal: dict[str, float]) -> str:
    enq, n_io = sizes["enqueue"], sizes["io"]["n"]
    rows = [
        (
            "enqueue, one at a time",
            f"{enq['n_one']:,} no-op tasks, each send awaited before the next; no worker",
        ),
        (
            "enqueue, batched",
            f"{enq['n']:,} no-op tasks in batches of {enq['batch']:,} through the framework's"
            " batch API (aiotask `send_batch`, Celery `group`, streaQ `enqueue_many`, the floor"
            " a pipeline) or, where there is none, `asyncio.gather`",
        ),
        (
            "drain",
            f"{sizes['drain']['n']:,} no-op tasks pre-enqueued, then one worker process started;"
            " tasks/s from the first completion to the last (the worker's boot time is left out"
            " and kept in the JSON as `boot_s`)",
        ),
        (
            "round trip",
            f"{sizes['latency']['n']:,} sequential send {ARROW} result waits on a warm worker,"
            " through each framework's own result API",
        ),
        (
            "I/O-bound",
            f"{n_io:,} tasks sleeping {SLEEP_S * 1000:.0f} ms at concurrency {CONCURRENCY},"
            f" enqueue to last result, as % of the ideal N{TIMES}{SLEEP_S}/{CONCURRENCY} s"
            f" = {n_io * SLEEP_S / CONCURRENCY:.2f} s",
        ),
        (
            "CPU-bound",
            f"{sizes['cpu']['n']:,} sync tasks of about {cal['task_s'] * 1000:.0f} ms of pure"
            " Python each, in the worker's process pool (ideal on this machine:"
            f" {cal['ideal_tasks_per_s']:.0f} tasks/s)",
        ),
        (
            "chord",
            f"a chord of {sizes['chord']['n']:,} header tasks and a summing body, send to the"
            " body's result, where the framework has chords",
        ),
        (
            "idle memory",
            "RSS (and PSS, which does not count twice the pages that forked children share) of"
            " the worker's whole process tree, 1.5 s after a warm-up, idle",
        ),
    ]
    head = "| workload | what is measured |\n|---|---|\n"
    return head + "\n".join(f"| {a} | {b} |" for a, b in rows)


#: docs/benchmarks.md from this line on is written by hand (figures of the separate ratio
#: scripts) and kept as it is when `make bench` writes the page again
KEEP_MARK = "<!-- written by hand from here on: make bench keeps it -->"


def _kept_tail() -> str:
    try:
        text = DOC.read_text()
    except OSError:
        return ""
    at = text.find(KEEP_MARK)
    return "\n" + text[at:] if at >= 0 else ""


def write_docs(doc: dict[str, Any], table: str) -> None:
    write_chart(doc)
    m = doc["machine"]
    plan = doc["plan"]
    sizes = plan["sizes"]
    cal = doc["cpu_calibration"]
    pkgs = "\n".join(f"  - {FRAMEWORKS[k].label}: {v}" for k, v in m["packages"].items())
    setups = "\n".join(
        f"| {FRAMEWORKS[k].label} | {v['setup']} |" for k, v in doc["frameworks"].items()
    )
    unavailable = "".join(
        f"\n- {FRAMEWORKS[k].label} was not run: {why}" for k, why in doc["unavailable"].items()
    )
    reps = sorted(set(plan["repeats"].values()))
    workload_table = _workload_table(sizes, cal)
    text = f"""# Benchmarks

aiotask against Celery, the asyncio task queues taskiq, arq, SAQ and streaQ, and a "floor": a
raw redis-py loop doing only the Redis commands a task strictly needs (and its RabbitMQ twin in
raw aiormq, `floor-amqp`). Every framework runs the
same workloads, as separate producer and worker processes, against the same local Redis (and
RabbitMQ for the RabbitMQ columns), in the same run.

Generated by `make bench` (`python -m benchmarks.harness --full`), {doc["started"]}, in
{doc["duration_s"] / 60:.0f} minutes. Each figure is the median of {"/".join(map(str, reps))} runs,
with the min{DASH}max range in brackets. ↑: higher is better, ↓: lower is better.

![aiotask vs Celery and peers](benchmarks.png)

{table}

## Machine

- CPU: {m["cpu"]}, {m["cores"]} cores, {m["memory_gib"]} GiB; {m["os"]}
- Python {m["python"]}; Redis {m["redis_server"]}; RabbitMQ {m["rabbitmq_server"]}
- Packages:
{pkgs}

The producer, the worker and the servers share these {m["cores"]} cores, and other work on the
machine adds noise, so absolute figures are modest and vary between runs; the ratios measured in
the same run are the point.{unavailable}

## Workloads

{workload_table}

Completion is detected the same way for every framework: the producer checks, in pipelined
batches of 1,000, whether each task's result is stored (its result key exists; for aiotask and
SAQ, the stored state is final), polling every 20 ms. Round trips use each framework's own
result wait: aiotask, Celery, streaQ and the floor are woken by pub/sub; taskiq, arq and SAQ poll,
here every 1 ms (their defaults are 200-500 ms). SAQ's pub/sub wait, `Job.refresh(until_complete=)`,
subscribes anew on every call and misses the wake-up when a warm worker is faster, so it cannot
be used for a latency loop. arq's worker polls its queue: it runs with `poll_delay` 10 ms instead
of its default 500 ms, which would otherwise set every round trip.

Each measurement gets fresh processes and its own key namespace (a key prefix, or for frameworks
without one, a unique queue name and task ids); its keys are deleted afterwards with SCAN MATCH.

## Worker settings

| framework | worker |
|---|---|
{setups}

Celery keeps its defaults (prefork, early acknowledgement, prefetch multiplier 4); aiotask
acknowledges after the result is stored (at-least-once), which is more work per task. aiotask
starts its process pool lazily, at the first sync task, so its idle tree holds no pool children,
while Celery's prefork children are always up; taskiq always runs a supervisor and one worker
process. streaQ's round trip (about 100 ms) is its own `Task.result()`: it appears to wait out
coredis's 0.1 s unsubscribe timeout on every call.

## Idle memory and import budget

An idle `aiotask worker` (no task run yet; the process pool starts at the first plain-function
task, so the idle tree is one process), measured on this machine with `/proc/self/status` and
`python -X importtime`, Python 3.11, `.venv-bench` (redis-py 7.4). Each row is measured after
the rows above it, in the order a worker loads them (median of 5 fresh interpreters; RSS varied
by under 0.15 MiB between them); import times are with the bytecode and files in the page cache,
on a busy shared machine (load average 14-16: read them as orders of magnitude).

| what loads | RSS added | import time |
|---|---:|---:|
| the interpreter | 8.7 MiB | - |
| `asyncio` (with `ssl`, `socket`, `concurrent.futures`, `logging`) | 10.5 MiB | 100-250 ms |
| `orjson` (it imports `uuid`, `datetime`, `json`, `dataclasses`) | 0.9 MiB | 10-50 ms |
| `aiotask` (App, Task, canvas, coordination, control, security) | 2.8 MiB | 65-220 ms |
| `aiotask.worker` (no pool machinery, beat or events) | 0.4 MiB | 10-60 ms |
| `redis.asyncio` (all of redis-py; it imports `hashlib`) | 5.0 MiB | 110-240 ms |
| then aiotask's Redis broker and backend | 0.3 MiB | 5-35 ms |
| instead of Redis: the SQLite broker and backend (`sqlite3`) | 1.2 MiB | 5-30 ms |
| instead of Redis: `aio_pika` (with `importlib.metadata`, `hashlib`) | 6.3 MiB | 200-360 ms |
| then `aiotask.brokers.rabbitmq` | 0.9 MiB | 20-40 ms |
| not loaded on SQLite: `hashlib` (signing keys, unique keys, long paths) | 0.6 MiB | - |
| not loaded on SQLite: `tempfile` (`shutil`, `bz2`, `lzma`: long paths) | 0.6 MiB | 2-25 ms |
| not loaded on SQLite: the history, schedule, lock and coordination stores | 0.5 MiB | 30-40 ms |
| not loaded: `importlib.metadata` (email, zipfile, csv...), see below | 2.1 MiB | 40-150 ms |
| on first use: pool machinery 0.55, events 0.25, beat 0.1, cron 0.35, `--logfile` 0.15 | - | - |
| not in a worker: `typer`, click (pydantic only for odd option values) | 6.6 MiB | 120-450 ms |

The modules themselves, by the Python memory their import allocates (`tracemalloc`, each
module's own share, its imports left out) and their own import time (fastest of 7 runs), in an
idle Redis worker: aiotask's 86 modules hold 2.4 MiB and take about 40 ms; redis-py's 56 hold
3.9 MiB, `redis.commands.core` alone 0.7 MiB, cluster support (loaded by `import redis`,
unused without a cluster URL) about 0.8 MiB. The largest of aiotask's:

| module | Python memory | import time |
|---|---:|---:|
| `aiotask.task` | 118 KiB | 2.7 ms |
| `aiotask.brokers.redis_streams` | 111 KiB | 1.3 ms |
| `aiotask.brokers.base` | 98 KiB | 4.6 ms |
| `aiotask.backends.base` | 94 KiB | 2.2 ms |
| `aiotask.app` | 89 KiB | 0.6 ms |
| `aiotask.worker.outcome` | 86 KiB | 2.4 ms |
| `aiotask.backends.redis` | 76 KiB | 0.3 ms |
| `aiotask.canvas.compile` | 69 KiB | 1.2 ms |
| `aiotask.worker.settle` | 68 KiB | 0.6 ms |
| `aiotask._tls` | 68 KiB | 1.0 ms |
| `aiotask.canvas.primitives` | 65 KiB | 1.2 ms |
| `aiotask._urls` | 63 KiB | 1.5 ms |

Idle worker RSS, the process tree (the harness's `idle_rss_mib`, 2026-11-30, `--smoke
--workloads latency`, three runs of the code before and after this round, alternating, each
with arq, SAQ and the floor in the same run; load average 14-16 on 2 cores; memory does not
vary with the load, and each figure was the same in all three runs to 0.1 MiB): **29.3 MiB on
Redis** (before: 30.7), 27.4-27.5 on SQLite (before: 29.1-29.2), 35.9 on RabbitMQ with Redis
results (before: 36.6-36.7, two runs); in the same runs arq 30.4-30.6, SAQ 33.6-33.7, the raw
redis-py floor 28.6 (aiotask / arq 0.96, / SAQ 0.87, / floor 1.02). PSS: 18.9 MiB on Redis
(arq 20.0, SAQ 23.1, the floor 18.2). What keeps it there:

- `aiotask worker` parses its options with typer, then replaces itself (`os.execv`, same PID,
  same signals and file descriptors) with `python -m aiotask.cli._run_worker`, an interpreter
  that never imports typer, click, rich or pydantic. Only when aiotask is the process's own
  command: a program that calls `aiotask.cli.main()` itself keeps running in-process.
- `aiotask.cli` imports typer only when a command line is parsed.
- Broker and backend clients load with the URL scheme that needs them (`brokers.from_url`):
  a SQLite worker imports neither redis-py nor aio-pika.
- redis-py's `redis/utils.py` imports `importlib.metadata` at its top, only to look up its own
  version for `CLIENT SETINFO`. The worker's interpreter registers `importlib.metadata` as a
  lazy module (`importlib.util.LazyLoader`, the standard library's mechanism: the module runs
  at its first attribute access, so code that uses it sees no difference), and aiotask hands
  redis-py its version (`driver_info`, from `redis.__version__`), so the module never runs.
  aio-pika and aiormq read their versions at import: a RabbitMQ worker loads it anyway. (On
  Python 3.11 the same trick does not work for a module that is imported twice: the second
  `import` reads the module's `__spec__`, which runs it. So the standard library modules that
  `asyncio` and `orjson` pull in cannot be deferred this way.)
- What only some tasks or options need loads on first use: the process pool's machinery (the
  first plain-function task), beat and cron (`beat_schedule`, `@app.periodic`, `--beat`), the
  events machinery (`-E`), the dashboard's history, dead letters, Celery's formats
  (`celery_compat`), pickle, `logging.handlers` (`--logfile`), the Redis and SQLite
  coordination, lock, history and schedule stores, the Redis broker's inspection and events
  helpers (purge, stats, dead letters; `-E`), the sync API's `concurrent.futures.thread` (its
  exit hook is registered with the loop thread's first start, still ahead of
  concurrent.futures' own), `hmac` and `hashlib` (signing keys, unique-task keys; on Redis,
  redis-py imports `hashlib` itself), `tempfile` (a SQLite path too long for a socket name
  beside it). The Redis client names itself with `os.urandom(3).hex()`, which is what
  `secrets.token_hex` does, without importing `secrets` (and `hmac`).
  `tests/unit/test_worker_imports.py` pins the idle import graph, on Redis and on SQLite.
- `typing_extensions` (for `Task[P, R]`'s PEP 696 default) is imported for type checkers only;
  `Task.__class_getitem__` applies the default at run time.

Of the Redis worker's 29-30 MiB, 11.1 are file pages (libpython 5.2, OpenSSL's libcrypto 3.5
for `ssl`, which `asyncio` imports in any case, libc 1.5) and 19 anonymous: Python's object
arenas (12 MiB, 92% in use) and the C heap (4.8 MiB; 6.0 before this round). The heap shrank
by more than the modules left out allocate (about 0.1 MiB of Python objects): the difference is
where glibc's heap ends up after start-up, which depends on the order of allocations, so a
later unrelated change can move it by a few hundred KiB either way; `malloc_trim(0)` at idle
returns nothing (no free pages are left in the heap). Tried, no gain worth it: `gc.collect()`
after start-up (0.0), `malloc_trim(0)` (0.0 now; ctypes costs 0.3), `MALLOC_MMAP_THRESHOLD_`
and `MALLOC_TRIM_THRESHOLD_` (0.0), `PYTHONMALLOC=malloc` (+0.3, last round), `python -OO`
(+4.3 MiB: no cached optimized bytecode; it also drops users' asserts and docstrings), importing
the broker's modules before the event loop starts (+0.9). `MALLOC_ARENA_MAX=1` saves 0.3 MiB on
SQLite (its two query threads get no arenas of their own) and nothing on Redis (one thread);
it is not set: the worker would pass it to every process it starts, and threads in user tasks
would then contend for one arena. With redis-py 8 and the OpenTelemetry SDK installed, redis-py
imports the SDK's metrics: about 4 MiB more (`.venv`, same code, by a probe of the worker).

`make bench-smoke` guards each row's idle RSS: at most 33.5 MiB on SQLite, 39 on Redis, 42 on
RabbitMQ (measured above plus about 6 MiB for library updates; for Redis, over the redis-py 8
and OpenTelemetry figure), next to the ratios: aiotask not slower than Celery (drain, p50
round trip) and aiotask (SQLite)'s p50 round trip at most 3x aiotask (Redis)'s in the same run
(generous for a noisy shared machine). The rules live in `benchmarks/gate.py`.

## Running it

```
make bench-smoke   # about 3 minutes; prints the table; fails on the rules of the section above
make bench         # this page and its chart
.venv-bench/bin/python -m benchmarks.harness --smoke --frameworks aiotask,celery --workloads drain
```

Both build `.venv-bench` (aiotask editable plus the peers, so their pins never touch `.venv`)
and `.venv-bench/arq` (arq pins `redis<6`). Raw results: `benchmarks/.results/*.json`.
"""
    DOC.write_text(text + _kept_tail())
