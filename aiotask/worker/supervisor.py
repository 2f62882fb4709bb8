"""`aiotask worker --workers N`: one supervising parent, N event-loop worker processes.

One worker is one event loop on one core. The parent here starts N copies of the same
`aiotask worker` command line (each named `NAME-i`), restarts a child that dies (with backoff),
forwards signals, and gives up (exit 1, with a message) when a child keeps dying right after
it starts, e.g. an app that fails at import, instead of restarting it forever.

Children run in their own process group, so a terminal Ctrl-C or a supervisor's signal to
the parent's group reaches each child exactly once (through the parent) and keeps the
warm-then-cold meaning of a second signal. On Linux each child also gets SIGQUIT (cold
shutdown: hand back, exit) if the parent dies without stopping it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiotask._log import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["CHILD_ENV", "Child", "Supervisor", "parse_workers"]

log = get_logger(__name__)

#: set in each child's environment to its number (1..N): lets an app tell children apart
CHILD_ENV = "AIOTASK_WORKER_CHILD"
#: a child that lived this long before dying did useful work: its failure count restarts
HEALTHY_AFTER = 10.0
#: this many deaths in a row, each within HEALTHY_AFTER of the start: give up
MAX_START_FAILURES = 3
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
_PR_SET_PDEATHSIG = 1


def parse_workers(value: str) -> int:
    """`--workers N|auto` -> N (auto: the CPU count); raises ValueError on anything else."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    n = int(value)
    if n < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return n


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    """Linux: the kernel sends SIGQUIT to this child when the supervising parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    """One slot: its command line and the process currently filling it."""

    index: int
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    done: bool = field(default=False)


class Supervisor:
    """Runs the children until they have all exited; `run()` returns the exit code."""

    def __init__(
        self,
        argvs: Sequence[tuple[str, list[str]]],
        *,
        env: dict[str, str] | None = None,
        max_start_failures: int = MAX_START_FAILURES,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self.children = [
            Child(index=i, name=name, argv=argv) for i, (name, argv) in enumerate(argvs, 1)
        ]
        self.env = dict(os.environ if env is None else env)
        self.max_start_failures = max_start_failures
        self.healthy_after = healthy_after
        self.stopping = False
        self.gave_up: str | None = None

    # --- signals -------------------------------------------------------------------------
    def _forward(self, signum: int, _frame: FrameType | None = None) -> None:
        """Every signal goes to every live child; the children keep warm/cold semantics."""
        if not self.stopping:
            log.warning("supervisor: %s, stopping %d children", signal.Signals(signum).name,
                        len(self.children))  # fmt: skip
        self.stopping = True
        for child in self.children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    def _install(self) -> dict[int, object]:
        previous: dict[int, object] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            previous[sig] = signal.signal(sig, self._forward)
        return previous

    # --- children ------------------------------------------------------------------------
    def _start(self, child: Child) -> None:
        env = {**self.env, CHILD_ENV: str(child.index)}
        child.proc = subprocess.Popen(
            child.argv, env=env, process_group=0, preexec_fn=_die_with_parent
        )
        child.started = time.monotonic()
        child.restart_at = None
        log.info("supervisor: started %s (pid %d)", child.name, child.proc.pid)

    def _exited(self, child: Child, code: int) -> None:
        child.proc = None
        child.exit_code = code
        if self.stopping or self.gave_up is not None or code == 0:
            # asked to stop (by us, or a remote `control shutdown` to this child): no restart
            child.done = True
            return
        lived = time.monotonic() - child.started
        child.failures = child.failures + 1 if lived < self.healthy_after else 1
        if child.failures >= self.max_start_failures:
            self.gave_up = (
                f"worker child {child.name} keeps dying at start (exit code {code}, "
                f"{child.failures} times in a row within {self.healthy_after:.0f}s): giving up; "
                f"run `aiotask worker` without --workers to see why"
            )
            log.critical("supervisor: %s", self.gave_up)
            child.done = True
            self._forward(signal.SIGTERM)
            return
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (child.failures - 1))
        child.restart_at = time.monotonic() + delay
        child.restarts += 1
        log.error("supervisor: %s exited with code %d; restarting in %.1fs", child.name, code,
                  delay)  # fmt: skip

    def _tick(self, child: Child, now: float) -> None:
        if child.proc is not None:
            code = child.proc.poll()
            if code is not None:
                self._exited(child, code)
        elif child.restart_at is not None and now >= child.restart_at:
            if self.stopping:
                child.done = True
            else:
                self._start(child)
        elif not child.done and child.restart_at is None:
            child.done = True  # stopped while waiting for its restart

    def run(self) -> int:
        """Start all children, keep them running until stopped; 0 if all exited 0, 1 if any
        did not or the supervisor gave up (then `gave_up` says why)."""
        previous = self._install()
        try:
            for child in self.children:
                self._start(child)
            while not all(c.done for c in self.children):
                now = time.monotonic()
                for child in self.children:
                    self._tick(child, now)
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
        if self.gave_up is not None:
            return 1
        codes = [c.exit_code for c in self.children]
        log.info("supervisor: children exited with %s", codes)
        return 0 if all(code == 0 for code in codes) else 1
