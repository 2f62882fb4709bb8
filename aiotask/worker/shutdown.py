"""OS signals -> the RUNNING / WARM / COLD shutdown state machine."""

from __future__ import annotations

import asyncio
import enum
import signal

from aiotask._log import get_logger

log = get_logger(__name__)


class Phase(enum.Enum):
    RUNNING = "running"
    WARM = "warm"
    COLD = "cold"


class Shutdown:
    """First SIGTERM/SIGINT: warm. A second one, or SIGQUIT: cold."""

    def __init__(self) -> None:
        self.phase = Phase.RUNNING
        self.requested = asyncio.Event()
        self.cold = asyncio.Event()

    def request(self, *, cold: bool = False) -> None:
        if cold or self.phase is not Phase.RUNNING:
            if self.phase is not Phase.COLD:
                log.warning("cold shutdown: running tasks are abandoned and will be redelivered")
            self.phase = Phase.COLD
            self.cold.set()
        else:
            log.warning("warm shutdown: finishing running tasks (signal again for cold shutdown)")
            self.phase = Phase.WARM
        self.requested.set()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Route SIGTERM/SIGINT/SIGQUIT to this state machine (main thread only)."""
        loop.add_signal_handler(signal.SIGTERM, self.request)
        loop.add_signal_handler(signal.SIGINT, self.request)
        loop.add_signal_handler(signal.SIGQUIT, lambda: self.request(cold=True))

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.remove_signal_handler(sig)
