"""Connecting at start: wait for a broker that is not up yet instead of exiting at once.

A worker started before its broker (a host boot, `docker compose up`, a broker restart) used to
exit within a fraction of a second; supervisord counts that as a failed start and, after
`startretries`, gives up (FATAL) and never starts the worker again. With
`broker_connection_retry_on_startup` (on by default) the worker retries with backoff, logging
each attempt, for up to `broker_connection_startup_timeout` seconds, then exits 1 so the
process supervisor restarts it. Refused credentials and failed TLS handshakes (wrong CA, host
name, client certificate) are not retried: waiting cannot fix them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask import _tls
from aiotask._backoff import Backoff
from aiotask._log import get_logger
from aiotask._urls import redact
from aiotask.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from aiotask.app import App
    from aiotask.settings import Settings

log = get_logger(__name__)
#: Words in an error's type name (the client library's) that mean "refused", not "unreachable".
_REFUSAL_WORDS = ("Authentication", "Authorization", "Permission", "AccessRefused")


def refused(exc: BaseException) -> bool:
    """True when the error chain says the server refused us (bad password, no permission,
    a TLS handshake that failed on certificates)."""
    if _tls.permanent(exc):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = (cls.__name__ for cls in type(current).__mro__)
        if any(word in name for name in names for word in _REFUSAL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


async def connect(app: App, conf: Settings, stop: asyncio.Event) -> bool:
    """Connect the app, retrying an unreachable broker or backend; False if `stop` was set."""
    if not conf.broker_connection_retry_on_startup:
        await app.connect()
        return True
    backoff = Backoff(first=0.5, cap=10.0, deadline=conf.broker_connection_startup_timeout)
    attempt = 0
    while True:
        attempt += 1
        try:
            await app.connect()
        except BrokerConnectionError as exc:
            if refused(exc):
                await app.close()
                raise
            if backoff.expired:
                await app.close()
                raise BrokerConnectionError(
                    f"gave up connecting at start after {backoff.elapsed:.0f}s "
                    f"(broker_connection_startup_timeout): {exc}"
                ) from exc
            delay = backoff.next_delay()
            log.warning(
                "cannot connect to the broker (%s) at start, attempt %d: %s; retrying in %.1fs "
                "(for up to %gs: broker_connection_startup_timeout)",
                redact(conf.broker_url),
                attempt,
                exc,
                delay,
                conf.broker_connection_startup_timeout,
            )
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
                return False  # asked to stop while waiting: nothing to drain
            except TimeoutError:
                continue
        if attempt > 1:
            log.info("connected to the broker after %d attempts", attempt)
        return True
