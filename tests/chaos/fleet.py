"""Real `aiotask worker` processes the harness kills, stops and restarts by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random
    from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Slot:
    """One worker seat: the current process, its log, and what we did to it."""

    index: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped by us: the kill loop leaves it alone
    starts: int = 0


@dataclass
class Fleet:
    """N worker seats; a killed or dead worker is restarted at once with the same settings."""

    directory: Path
    env: dict[str, str]
    size: int
    concurrency: int
    queues: str
    slots: list[Slot] = field(default_factory=list)
    kills: int = 0
    deaths: list[str] = field(default_factory=list)  # exits we did not cause

    def __post_init__(self) -> None:
        self.slots = [Slot(i, self.directory / f"worker-{i}.log") for i in range(self.size)]

    def _spawn(self, slot: Slot) -> None:
        slot.starts += 1
        with slot.log.open("ab") as out:
            out.write(f"--- start {slot.starts} at {time.time():.3f}\n".encode())
            out.flush()
            slot.proc = subprocess.Popen(
                [
                    *(
                        sys.executable,
                        "-m",
                        "aiotask",
                        "worker",
                        "-A",
                        "tests.chaos.chaos_tasks:app",
                    ),
                    *("-c", str(self.concurrency), "-Q", self.queues, "-l", "INFO"),
                    *("-n", f"chaos-{slot.index}-{slot.starts}"),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def start(self, timeout: float = 60) -> None:
        """Start every seat and wait until each worker has logged that it is ready."""
        for slot in self.slots:
            self._spawn(slot)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            while b" ready" not in slot.log.read_bytes().rsplit(b"--- start", 1)[-1]:
                assert slot.proc is not None
                if slot.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {slot.index} did not start: see {slot.log}")
                time.sleep(0.1)

    def kill_one(self, rng: random.Random) -> int | None:
        """kill -9 one running worker (not a stopped one) and start a new one in its seat."""
        running = [s for s in self.slots if not s.stopped and s.proc and s.proc.poll() is None]
        if not running:
            return None
        slot = rng.choice(running)
        assert slot.proc is not None
        pid = slot.proc.pid
        slot.proc.kill()
        slot.proc.wait()
        with slot.log.open("ab") as out:
            out.write(f"--- killed by chaos (SIGKILL) at {time.time():.3f}\n".encode())
        self.kills += 1
        self._spawn(slot)
        return pid

    def sigstop(self, rng: random.Random) -> Slot | None:
        running = [s for s in self.slots if not s.stopped and s.proc and s.proc.poll() is None]
        if not running:
            return None
        slot = rng.choice(running)
        assert slot.proc is not None
        slot.stopped = True
        slot.proc.send_signal(signal.SIGSTOP)
        return slot

    def sigcont(self, slot: Slot) -> None:
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.send_signal(signal.SIGCONT)
        slot.stopped = False

    def reap(self) -> None:
        """Restart any worker that exited on its own, and remember that it did."""
        for slot in self.slots:
            if slot.proc is not None and not slot.stopped and slot.proc.poll() is not None:
                self.deaths.append(self._obituary(slot))
                self._spawn(slot)

    def _obituary(self, slot: Slot) -> str:
        """How a worker that exited by itself ended: before or after ready, and its last error."""
        assert slot.proc is not None
        text = slot.log.read_bytes().rsplit(b"--- start", 1)[-1].decode(errors="replace")
        when = "after ready" if " ready" in text else "before ready"
        lines = text.splitlines()
        raised = [ln for ln in lines if "Error" in ln and not ln.startswith(("[", " "))]
        logged = [ln for ln in lines if "ERROR/" in ln or "CRITICAL/" in ln]
        found = raised or logged
        last = found[-1].strip()[:200] if found else "no error logged"
        return f"worker {slot.index} exited {slot.proc.returncode} {when}: {last}"

    def stop(self, timeout: float = 30) -> list[int]:
        """Warm shutdown of every worker (SIGTERM), SIGKILL past the timeout; exit codes."""
        codes: list[int] = []
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                if slot.stopped:
                    slot.proc.send_signal(signal.SIGCONT)
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                codes.append(slot.proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                codes.append(slot.proc.wait())
            slot.proc = None
        return codes
