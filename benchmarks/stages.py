"""Instructions (and µs) per task of each stage of one Redis worker's hot path, by callgrind.

    python -m benchmarks.stages                 # 2,000 and 4,000 no-op tasks, ~3-5 min
    python -m benchmarks.stages --native 5      # more native drains for the µs conversion

How the stages are told apart: callgrind sees C functions, not Python ones. A tiny C module
(benchmarks/_stagemark.c, compiled here with gcc into a temporary directory) has one function
per stage, `stage_<name>(fn, *args)`, which calls `fn(*args)`. The child wraps the worker's
parts in them once the worker is up; callgrind's *inclusive* cost of `stage_<name>` is then
every instruction spent in that call, whatever it calls. A coroutine (receive, flush, store,
ack) is wrapped so that each of its steps (`send`/`throw`) goes through its stage function: its
own work and the reply parsing done in its steps count, the event loop's socket reads and
selector between the steps do not. What is wrapped:

- receive: `broker.receive` (XREADGROUP script call, reply parsing, Delivery objects)
- accept: `Dispatcher.accept`, containing decode and run (the rest: admit, start bookkeeping,
  the finished task's settlement handed to the settler)
- decode: `Wire.decode` (frame, orjson, envelope checks, the Message)
- run: `_eager.start` (the Task, TaskContext, the call, classify, log check), containing
  encode: `Executor._record` (the result record's bytes, the Settlement)
- flush: `Settler.flush`, containing store: `Settler._store` (the results' script call) and
  ack: `Settler._ack` (XACK + XDEL)
- event loop and the rest: the total of an unwrapped drain minus all of the above (selector,
  socket reads, loop callbacks, the consumer loop's own steps, heartbeats).

Every drain first runs 1,000 tasks uncounted (first-use costs: lazy imports, first calls). The
total is (count at 4,000 tasks - count at 2,000) / 2,000, so fixed costs cancel; a stage counts
only while the drain runs (its wrapper is installed once the worker is warm), so its figure is
its count over both drains / 6,000 (a difference of two drains is too noisy for the per-batch
stages: one receive and one flush per batch, and the batch sizes vary from run to run).
The µs column converts instructions with the instructions per µs of user CPU measured
in the same run: native (no valgrind) drains of 5,000 and 25,000 tasks, user CPU time over the
same window (getrusage), median of `--native` pairs. System CPU (the socket syscalls) is not in
callgrind's counts and is shown apart.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.drain_instructions import SIZES, count, drain

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import ModuleType

    from aiotask.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).with_name("_stagemark.c")
#: native drains are longer: getrusage advances in clock ticks
NATIVE_SIZES = (5000, 25000)
#: tasks drained before the counting starts (first-use costs: lazy imports, first calls)
WARM = 1000
STAGES = ("receive", "accept", "decode", "run", "encode", "flush", "store", "ack")


def build(into: Path) -> Path:
    """Compile _stagemark.c for this interpreter; the directory to put on sys.path."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    include = sysconfig.get_paths()["include"]
    out = into / f"_stagemark{suffix}"
    argv = ["gcc", "-O2", "-fno-ipa-icf", "-shared", "-fPIC", f"-I{include}", str(SOURCE)]
    subprocess.run([*argv, "-o", str(out)], check=True)
    return into


class _Step:
    """An awaitable over a coroutine whose every step runs inside one stage function."""

    __slots__ = ("_coro", "_mark")

    def __init__(self, coro: Coroutine[Any, Any, Any], mark: Callable[..., Any]) -> None:
        self._coro, self._mark = coro, mark

    def __await__(self) -> _Step:
        return self

    def __iter__(self) -> _Step:
        return self

    def __next__(self) -> Any:
        return self._mark(self._coro.send, None)

    def send(self, value: Any) -> Any:
        return self._mark(self._coro.send, value)

    def throw(self, *exc: Any) -> Any:
        return self._mark(self._coro.throw, *exc)

    def close(self) -> None:
        self._coro.close()


def _sync(mark: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: mark(fn, *args)


def _async(mark: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: _Step(fn(*args), mark)


def wrap(worker: Worker, marks: ModuleType) -> None:
    """Route the worker's stages through the marker functions (the child, once it is up)."""
    from aiotask.worker import _eager

    dispatcher, settler = worker.dispatcher, worker.settler
    executor, app = dispatcher.executor, worker.app
    broker: Any = app.broker
    broker.receive = _async(marks.receive, broker.receive)
    d: Any = dispatcher
    d.accept = _sync(marks.accept, dispatcher.accept)
    d.wire = argparse.Namespace(decode=_sync(marks.decode, dispatcher.wire.decode))
    _eager.start = _sync(marks.run, _eager.start)  # type: ignore[assignment]
    e: Any = executor
    e._record = _sync(marks.encode, executor._record)
    s: Any = settler
    s.flush = _async(marks.flush, settler.flush)
    s._store = _async(marks.store, settler._store)
    s._ack = _async(marks.ack, settler._ack)


def inclusive(out: Path) -> dict[str, int]:
    """Inclusive instructions of each stage function and the total, from a callgrind file."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0][:1].isdigit():
            continue
        n = int(parts[0].replace(",", ""))
        if "PROGRAM TOTALS" in line:
            found["total"] = n
        for name in STAGES:
            if f":stage_{name} " in line or line.rstrip().endswith(f":stage_{name}"):
                found[name] = n
    return found


def staged(n: int, redis_url: str, marks_dir: Path) -> dict[str, int]:
    """One wrapped drain of n tasks under callgrind: inclusive counts per stage."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
            f"--callgrind-out-file={out}",
            *(sys.executable, "-m", "benchmarks.stages"),
            *("--child", str(n), "--redis-url", redis_url, "--marks", str(marks_dir)),
        ]
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        return inclusive(out)


def native(n: int, redis_url: str) -> tuple[float, float]:
    """(user, system) CPU seconds of one unwrapped drain of n tasks, no valgrind (a child)."""
    argv = [sys.executable, "-m", "benchmarks.stages", "--native-child", str(n)]
    done = subprocess.run(
        [*argv, "--redis-url", redis_url], cwd=ROOT, check=True, capture_output=True, text=True
    )
    user, system = done.stdout.split()[-2:]
    return float(user), float(system)


def child_native(n: int, redis_url: str) -> None:
    marks: dict[str, resource.struct_rusage] = {}

    def on(_: Worker) -> None:
        marks["on"] = resource.getrusage(resource.RUSAGE_SELF)

    def off() -> None:
        marks["off"] = resource.getrusage(resource.RUSAGE_SELF)

    asyncio.run(drain(n, False, redis_url, on, off, WARM))
    a, b = marks["on"], marks["off"]
    print(b.ru_utime - a.ru_utime, b.ru_stime - a.ru_stime)


def child_staged(n: int, redis_url: str, marks_dir: str) -> None:
    from benchmarks.drain_instructions import toggle

    spec = importlib.util.spec_from_file_location(
        "_stagemark", next(Path(marks_dir).glob("_stagemark*"))
    )
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the stage markers from {marks_dir}")
    marks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(marks)

    def on(worker: Worker) -> None:
        wrap(worker, marks)
        toggle("on")

    asyncio.run(drain(n, False, redis_url, on, warm=WARM))


def table(stages: dict[str, float], total: float, per_us: float, system_us: float) -> str:
    """The stage table (markdown): instructions and µs per task, exclusive of nested stages."""
    rows = [
        ("receive", stages["receive"]),
        ("decode", stages["decode"]),
        ("run", stages["run"] - stages["encode"]),
        ("encode result", stages["encode"]),
        ("accept (the rest)", stages["accept"] - stages["decode"] - stages["run"]),
        ("store", stages["store"]),
        ("ack", stages["ack"]),
        ("settle (the rest)", stages["flush"] - stages["store"] - stages["ack"]),
    ]
    rows.append(("event loop and the rest", total - sum(v for _, v in rows)))
    lines = ["| stage | instructions per task | µs per task (user CPU) |", "|---|---:|---:|"]
    lines += [f"| {name} | {v:,.0f} | {v / per_us:.1f} |" for name, v in rows]
    lines.append(f"| **total** | **{total:,.0f}** | **{total / per_us:.1f}** |")
    lines.append(f"| system CPU (socket syscalls; not in the counts) | | {system_us:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--native", type=int, default=3, help="native drain pairs (µs conversion)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--native-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--marks", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.native_child:
        child_native(args.native_child, args.redis_url)
        return 0
    if args.child:
        child_staged(args.child, args.redis_url, args.marks)
        return 0
    span = SIZES[1] - SIZES[0]
    with tempfile.TemporaryDirectory() as tmp:
        marks_dir = build(Path(tmp))
        runs = [staged(n, args.redis_url, marks_dir) for n in SIZES]
    missing = [s for s in STAGES if s not in runs[0] or s not in runs[1]]
    if missing:
        print(f"[stages] no count for {missing} (callgrind_annotate output changed?)")
        return 1
    # the stages count only while the drain runs (wrapped after start-up): per task over both
    stages = {s: (runs[0][s] + runs[1][s]) / sum(SIZES) for s in STAGES}
    print(f"[stages] inclusive counts at {SIZES} tasks: {runs}")
    totals = [count(n, False, args.redis_url, WARM) for n in SIZES]
    total = (totals[1] - totals[0]) / span
    users, systems = [], []
    for _ in range(args.native):
        (u0, s0), (u1, s1) = (native(n, args.redis_url) for n in NATIVE_SIZES)
        users.append((u1 - u0) / (NATIVE_SIZES[1] - NATIVE_SIZES[0]) * 1e6)
        systems.append((s1 - s0) / (NATIVE_SIZES[1] - NATIVE_SIZES[0]) * 1e6)
    user_us, system_us = statistics.median(users), statistics.median(systems)
    per_us = total / user_us
    wrapped = (runs[1]["total"] - runs[0]["total"]) / span
    print(f"[stages] unwrapped {total:,.0f} instructions per task ({totals} for {SIZES}); "
          f"wrapped {wrapped:,.0f} (the markers' own cost: {wrapped - total:,.0f})")  # fmt: skip
    print(f"[stages] native user CPU per task {user_us:.1f} µs (pairs: "
          f"{', '.join(f'{u:.1f}' for u in users)}), system {system_us:.1f} µs; "
          f"{per_us:,.0f} instructions per µs; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(table(stages, total, per_us, system_us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
