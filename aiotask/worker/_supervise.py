"""Keep a worker's side loops alive: a crash is logged CRITICAL and the loop restarts."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from aiotask._backoff import Backoff
from aiotask._log import get_logger
from aiotask._time import monotonic

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = get_logger(__name__)

#: A loop that ran this long before crashing did useful work: its next crash starts a new
#: outage (the give-up clock restarts) instead of continuing a crash loop.
HEALTHY_AFTER = 5.0


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    fatal: tuple[type[BaseException], ...] = (),
    give_up_after: float = math.inf,
) -> None:
    """Run `run()` until it returns; restart it with backoff whenever it raises.

    `fatal` errors propagate at once (they already mean "gave up", e.g. a broker unreachable
    for broker_unreachable_timeout). A loop that keeps crashing for `give_up_after` seconds
    re-raises, so the worker exits and its supervisor restarts it rather than spinning.
    """
    backoff = Backoff(first=0.1, cap=5.0, deadline=give_up_after)
    while True:
        started = monotonic()
        try:
            await run()
            return
        except fatal:
            raise
        except Exception as exc:
            if monotonic() - started >= HEALTHY_AFTER:
                backoff.reset()
            if backoff.expired:
                log.critical("worker loop %s keeps crashing; giving up: %r", name, exc)
                raise
            delay = backoff.next_delay()
            log.critical(
                "worker loop %s crashed; restarting in %.1fs: %r", name, delay, exc, exc_info=exc
            )
            await asyncio.sleep(delay)
