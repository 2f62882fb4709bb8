"""Interleaved drain runs of two worker variants, with the worker's CPU time per task.

On this shared 2-core machine the drain rate of one run swings with whatever else runs; the CPU
a worker spends per task swings much less. So each comparison here:

- runs the variants in rounds, the order rotated every round, so neither always runs first;
- samples the worker process's user + system CPU seconds (/proc, its children excluded) every
  SAMPLE_S while it drains, and interpolates it at the producer's first and last completion
  (both processes read the same monotonic clock): the CPU of the drain itself, boot left out;
- reports medians, the per-round ratios' range, and both figures (wall-clock and CPU).

Used by benchmarks/floor_ratio.py (aiotask vs the raw redis-py floor) and
benchmarks/events_ratio.py (events off vs on).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.harness import SMOKE, Plan, Runner

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from pathlib import Path

    from benchmarks.frameworks import Framework
    from benchmarks.harness import Measurement

#: seconds between two samples of the worker's CPU time (/proc ticks are 10 ms)
SAMPLE_S = 0.01


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc), its pool children excluded."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process (Linux /proc), its pool children excluded."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _at(samples: list[tuple[float, float]], t: float) -> float:
    """CPU seconds at time `t`, linearly interpolated between the two samples around it."""
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, t)
    if i <= 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1


class CpuRunner(Runner):
    """The harness's Runner, also measuring the worker's CPU over the drain window:
    `cpu_us_per_task` (the drain) and `worker_cpu_s` (everything, start-up included)."""

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
        samples: list[tuple[float, float]] = []
        system: list[tuple[float, float]] = []
        sampler = asyncio.create_task(_sample(procs, samples, system))
        try:
            await super()._run(fw, workload, ns, m, procs, worker_log, producer_log)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        worker = procs.get("worker")
        if worker is not None and worker.returncode is None:
            at, (user, sys_s) = time.perf_counter(), cpu_split(worker.pid)
            samples.append((at, user + sys_s))
            system.append((at, sys_s))
            m.values["worker_cpu_s"] = samples[-1][1]
        first, end = m.marks.get("mark_first"), m.marks.get("mark_end")
        drain = m.values.get("drain")
        if len(samples) >= 2 and first is not None and end is not None and drain:
            tasks = drain * (end - first)
            if tasks > 0:
                cpu = _at(samples, end) - _at(samples, first)
                m.values["cpu_us_per_task"] = cpu / tasks * 1e6
                sys_s = _at(system, end) - _at(system, first)
                m.values["sys_us_per_task"] = sys_s / tasks * 1e6


async def _sample(
    procs: dict[str, Any], samples: list[tuple[float, float]], system: list[tuple[float, float]]
) -> None:
    while procs.get("worker") is None:  # noqa: ASYNC110 (the harness's Runner spawns it)
        await asyncio.sleep(SAMPLE_S / 2)
    pid = procs["worker"].pid
    with contextlib.suppress(OSError):
        while True:
            at, (user, sys_s) = time.perf_counter(), cpu_split(pid)
            samples.append((at, user + sys_s))
            system.append((at, sys_s))
            await asyncio.sleep(SAMPLE_S)


@dataclass
class Series:
    """One variant's figures, a value per round."""

    label: str
    drain: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    #: the system (kernel) part of cpu_us
    sys_us: list[float] = field(default_factory=list)


def plan(n: int) -> Plan:
    return Plan(
        **{
            **SMOKE.__dict__,
            "mode": "interleave",
            "frameworks": (),
            "workloads": ("drain",),
            "sizes": {"drain": {"n": n, "batch": 1000}},
            "timeout_s": 300,
        }
    )


async def interleave(
    runner: Runner,
    variants: tuple[Framework, ...],
    rounds: int,
    tag: str,
    *,
    together: bool = False,
) -> dict[str, Series] | None:
    """Drain with each variant once per round, the order rotated; None if a run failed.

    `together`: the variants of a round drain at the same time (each its own namespace,
    producer and worker), so both see the same load from the rest of the machine; one after
    the other, a variant that happens to run while other jobs are busy pays more CPU per task
    (cache and scheduler churn), whatever it does itself."""
    series = {fw.key: Series(fw.label) for fw in variants}
    for r in range(rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        if together:
            measured = await asyncio.gather(*(runner.measure(fw, "drain", r) for fw in order))
        else:
            measured = [await runner.measure(fw, "drain", r) for fw in order]
        for fw, m in zip(order, measured, strict=True):
            if m.error or "drain" not in m.values:
                print(f"[{tag}] {fw.label} round {r}: ERROR {m.error}", file=sys.stderr)
                return None
            s = series[fw.key]
            s.drain.append(m.values["drain"])
            s.cpu_us.append(m.values.get("cpu_us_per_task", float("nan")))
            s.sys_us.append(m.values.get("sys_us_per_task", float("nan")))
            print(
                f"[{tag}] round {r} {fw.label:22s} drain {s.drain[-1]:8.0f} tasks/s"
                f"  worker CPU {s.cpu_us[-1]:6.1f} us/task (system {s.sys_us[-1]:5.1f})",
                flush=True,
            )
    return series


@dataclass(frozen=True)
class Ratio:
    """a / b of the medians, and the range of the per-round ratios."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.3f} (per round {self.low:.3f}-{self.high:.3f})"


def ratio(a: list[float], b: list[float]) -> Ratio:
    per_round = [x / y for x, y in zip(a, b, strict=True) if y == y and y > 0]
    if not per_round:
        nan = float("nan")
        return Ratio(nan, nan, nan)
    return Ratio(statistics.median(a) / statistics.median(b), min(per_round), max(per_round))


def summary(s: Series) -> str:
    cpu = [c for c in s.cpu_us if c == c]
    sys_us = [c for c in s.sys_us if c == c]
    cpu_txt = (
        f"CPU median {statistics.median(cpu):.1f} us/task ({min(cpu):.1f}-{max(cpu):.1f}), "
        f"of which system {statistics.median(sys_us):.1f}"
        if cpu and sys_us
        else "CPU n/a"
    )
    return (
        f"{s.label}: drain median {statistics.median(s.drain):.0f}/s "
        f"({min(s.drain):.0f}-{max(s.drain):.0f}); {cpu_txt}"
    )


def report(tag: str, head: str, series: tuple[Series, Series], *figures: tuple[str, Ratio]) -> None:
    """Print the comparison: a head line, each variant's summary, then the named ratios."""
    lines = [head, *(summary(s) for s in series), *(f"{name}: {r}" for name, r in figures)]
    print("\n".join(f"[{tag}] {line}" for line in lines))


def parser(prog: str, doc: str | None, rounds: str, rounds_help: str) -> argparse.ArgumentParser:
    """The command line both comparisons share: --n, --<rounds>, the server URLs."""
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--n", type=int, default=20_000, help="tasks per drain")
    p.add_argument(f"--{rounds}", type=int, default=5, help=rounds_help)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    return p


async def compare(
    args: argparse.Namespace,
    pair: tuple[Framework, Framework],
    rounds: int,
    tag: str,
    *,
    together: bool = False,
) -> tuple[Series, Series] | None:
    """Interleaved drains of `args.n` no-op tasks with the two variants: their Series (None if
    a run failed)."""
    runner = CpuRunner(plan(args.n), args.redis_url, args.amqp_url)
    series = await interleave(runner, pair, rounds, tag, together=together)
    return None if series is None else (series[pair[0].key], series[pair[1].key])


def main_with(
    p: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    argv: list[str] | None,
) -> int:
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(run(args))
