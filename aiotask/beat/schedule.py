"""When an entry fires: cron expressions (via cronsim) and fixed intervals, as pure functions.

Every beat process must compute the *same* slots for an entry, whatever its start time, so
that a slot can be claimed once in the store: cron slots are wall-clock instants in the
entry's time zone, and interval slots are aligned to the unix epoch (every=30 fires at :00 and
:30 of each minute, on every host).

Daylight saving time (cronsim follows Vixie cron): a fixed local time that a spring-forward
skips (02:30 on the night clocks jump from 02:00 to 03:00) fires once, at the jump (03:00
local); a fixed local time that a fall-back repeats fires once, at its first occurrence.
Expressions whose hour field is a wildcard or a step (`*/30 * * * *`) follow real time, so
they keep firing every 30 minutes through the repeated hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from zoneinfo import ZoneInfo

#: Celery/cron aliases, spelled out as the five-field expressions they stand for.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: The shortest interval: a beat claims, sends and records every slot, so an entry fires at
#: most once a second (a cron expression, seconds field included, cannot fire more often).
MIN_EVERY = 1.0


def zone(name: str) -> ZoneInfo:
    """A time zone by IANA name, or a ConfigurationError naming it."""
    # zoneinfo and cronsim load with the first cron entry, not with every app (0.4 MiB of
    # an idle worker's RSS with sysconfig and calendar)
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression (5 fields, or 6 with seconds first, or an @alias) in a time zone."""

    expr: str
    tz: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _spec: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from cronsim import CronSim, CronSimError

        spec = ALIASES.get(self.expr.strip().lower(), self.expr.strip())
        object.__setattr__(self, "_zone", zone(self.tz))
        object.__setattr__(self, "_spec", spec)
        if len(spec.split()) not in (5, 6):
            raise ConfigurationError(
                f"bad cron expression {self.expr!r}: expected 5 fields (minute hour day month "
                "weekday), 6 with seconds first, or an alias such as @hourly"
            )
        try:
            next(CronSim(spec, datetime(2000, 1, 1, tzinfo=self._zone)))
        except (CronSimError, StopIteration) as exc:
            raise ConfigurationError(f"bad cron expression {self.expr!r}: {exc}") from None

    def slots(self, after: float) -> Iterator[float]:
        """Unix instants strictly after `after`, in order."""
        from cronsim import CronSim

        start = datetime.fromtimestamp(math.floor(after), tz=UTC).astimezone(self._zone)
        for instant in CronSim(self._spec, start):
            ts = instant.timestamp()
            if ts > after:
                yield ts

    def next_after(self, after: float) -> float:
        return next(self.slots(after), math.inf)

    def describe(self) -> str:
        return f"cron {self.expr!r} ({self.tz})"


@dataclass(frozen=True, slots=True)
class Every:
    """Every `seconds`, aligned to the unix epoch so every beat agrees on the slots."""

    seconds: float

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, int | float) and 0 < self.seconds < math.inf):
            raise ConfigurationError(
                f"every= must be a positive number of seconds, got {self.seconds!r}"
            )
        if self.seconds < MIN_EVERY:
            raise ConfigurationError(
                f"every={self.seconds!r} would fire more than once a second: the shortest "
                f"interval is every={MIN_EVERY:g} (one slot per second per entry)"
            )

    def slots(self, after: float) -> Iterator[float]:
        n = math.floor(after / self.seconds) + 1
        while True:
            yield round(n * self.seconds, 6)
            n += 1

    def next_after(self, after: float) -> float:
        return next(self.slots(after))

    def describe(self) -> str:
        return f"every {self.seconds:g}s"


Schedule = Cron | Every


def make_schedule(
    *, cron: str | None = None, every: float | None = None, tz: str | None = None
) -> Schedule:
    """Exactly one of `cron` / `every`; `tz` only with cron."""
    if (cron is None) == (every is None):
        raise ConfigurationError("a periodic entry needs exactly one of cron= or every=")
    if cron is not None:
        return Cron(cron, tz or "UTC")
    if tz is not None:
        raise ConfigurationError("tz= only applies to cron= schedules (every= is in real time)")
    assert every is not None  # noqa: S101 - narrowed above
    return Every(every)
