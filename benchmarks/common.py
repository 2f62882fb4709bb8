"""Stdlib-only pieces shared by the harness, the producer and the per-framework task modules.

Every framework's task module imports this, and some of them run in another virtualenv (arq pins
redis<6 and lives in .venv-bench/arq), so nothing here may import a third-party package.
"""

from __future__ import annotations

import math
import os
from typing import Any, Protocol

#: the unique key namespace of one measurement; every key, stream, queue and channel contains it
NS_ENV = "BENCH_NS"
REDIS_ENV = "BENCH_REDIS_URL"
AMQP_ENV = "BENCH_AMQP_URL"
POSTGRES_ENV = "BENCH_POSTGRES_URL"
BROKER_ENV = "BENCH_BROKER"  # "redis", "amqp", "sqlite" or "postgres"
CONCURRENCY_ENV = "BENCH_CONCURRENCY"

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

#: the I/O-bound task sleeps this long
SLEEP_S = 0.05
#: the CPU-bound task's loop length: about 10-20 ms of pure Python on one core
CPU_N = 300_000


def ns() -> str:
    return os.environ.get(NS_ENV, "aiotbench-default")


def redis_url() -> str:
    return os.environ.get(REDIS_ENV, DEFAULT_REDIS)


def amqp_url() -> str:
    return os.environ.get(AMQP_ENV, DEFAULT_AMQP)


def postgres_url() -> str:
    return os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)


def pg_schema(namespace: str | None = None) -> str:
    """The PostgreSQL schema of one measurement: the namespace as a plain identifier (the
    peers' table prefixes and channel names take no hyphen). Dropped afterwards."""
    return (namespace or ns()).replace("-", "_")


def broker_kind() -> str:
    return os.environ.get(BROKER_ENV, "redis")


def concurrency() -> int:
    return int(os.environ.get(CONCURRENCY_ENV, "100"))


def spin(n: int) -> int:
    """The CPU-bound body: a pure-Python loop, identical for every framework."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


class NotSupported(Exception):
    """The framework has no native way to do this workload (the cell reads n/a)."""


class Adapter(Protocol):
    """What the producer needs from one framework. Handles are whatever the framework returns."""

    #: how `send_many` enqueues, for the notes ("pipelined batch", "group", "gather")
    batch_note: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, kind: str) -> Any: ...
    async def send_many(self, kind: str, count: int) -> list[Any]: ...
    async def done_flags(self, handles: list[Any]) -> list[bool]: ...
    async def roundtrip(self) -> None: ...
    async def chord(self, size: int) -> None: ...


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]
