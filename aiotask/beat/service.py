"""Running beat as a process (`aiotask beat`) or inside a worker (`aiotask worker --beat`)."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import orjson

from aiotask._log import get_logger
from aiotask._time import now
from aiotask.beat.entry import entry_from_mapping
from aiotask.beat.runner import Beat, check_entries
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiotask.app import App
    from aiotask.beat.store import ScheduleStore

log = get_logger(__name__)


async def make_beat(app: App, *, clock: Callable[[], float] | None = None) -> Beat:
    """A beat over the app's result-backend store; refuses entries naming unknown tasks."""
    backend = await app.result_backend()
    store = backend.schedule_store(app.main)
    beat = Beat(app, store, app.beat_entries, clock=clock or now)
    beat.check()
    await check_stored(app, store)
    return beat


async def check_stored(app: App, store: ScheduleStore) -> None:
    """Refuse to start on a dynamic entry that no longer validates (e.g. written by an older
    version, or by hand): a ConfigurationError naming it, exit 2 in the CLI. A running beat
    that meets one later logs it and keeps the others going."""
    for name, blob in (await store.entries()).items():
        try:
            entry = entry_from_mapping(name, orjson.loads(blob))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ConfigurationError(
                f"stored periodic entry {name!r} is not valid: {exc}"
            ) from None
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"stored {exc} (fix or remove it: aiotask schedule remove)"
            ) from None
        check_entries(app, [entry])


async def embedded(app: App) -> None:
    """Beat inside a worker (`aiotask worker --beat`): runs until cancelled."""
    beat = await make_beat(app)
    log.info("beat %s embedded in the worker, %d entries in code", beat.name, len(beat.static))
    await beat.run(asyncio.Event())


async def serve(app: App, *, clock: Callable[[], float] | None = None) -> int:
    """Run beat until SIGTERM/SIGINT; the exit code for the CLI."""
    beat = await make_beat(app, clock=clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("beat %s started with %d entries in code", beat.name, len(beat.static))
    try:
        await beat.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await app.close()
    log.info("beat %s stopped after sending %d tasks", beat.name, beat.sent)
    return 0
