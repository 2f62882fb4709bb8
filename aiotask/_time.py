"""Clocks and the parsing of durations and rates."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from aiotask.exceptions import ConfigurationError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def now() -> float:
    """Wall-clock unix seconds: what etas and expiries are compared with across machines."""
    return time.time()


def monotonic() -> float:
    """Local elapsed time, immune to clock changes: for timeouts and leases in one process."""
    return time.monotonic()


def to_timestamp(value: datetime) -> float:
    """Unix seconds of a datetime; a naive datetime is taken as UTC (Celery's convention)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def parse_rate(rate: str | float | int | None) -> float | None:
    """'10/s', '100/m', '1000/h' (or a number of tasks per second) -> tasks per second."""
    if rate is None:
        return None
    if isinstance(rate, int | float):
        if rate <= 0:
            raise ConfigurationError(f"rate limit must be positive, got {rate!r}")
        return float(rate)
    match = _RATE.match(rate)
    if not match:
        raise ConfigurationError(
            f"bad rate limit {rate!r}: write it as N/s, N/m or N/h, e.g. '10/s'"
        )
    count, per, unit = float(match[1]), match[2], match[3]
    seconds = _UNITS[unit] * (float(per) if per else 1.0)
    if count <= 0 or seconds <= 0:
        raise ConfigurationError(f"rate limit must be positive, got {rate!r}")
    return count / seconds
