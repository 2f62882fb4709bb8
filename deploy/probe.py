#!/usr/bin/env python3
"""Liveness/readiness exec probe for an aiotask worker container (stdlib only, no aiotask import).

    python3 probe.py live   [--pid PID]   exit 0 if the worker process is alive and not stopped
    python3 probe.py ready  [--pid PID]   ... and its broker's port accepts a TCP connection

Without --pid it looks for an `aiotask worker` process in /proc (in a container: the only one).
A worker stopped (SIGSTOP, a debugger) or a zombie is not alive. `ready` reads the broker from
AIOTASK_BROKER_URL (as the worker does); sqlite:// and memory:// need no server.
For readiness, `aiotask status -A proj:app --local` asks the store instead (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


def _state(pid: int) -> str | None:
    """The process state letter from /proc/PID/stat (R, S, D, T, Z...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _is_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
    if "aiotask.cli._run_worker" in words:  # `aiotask worker` re-executes itself as this
        return True
    return "worker" in words and any(w in {"aiotask", "aiotask.__main__"} for w in words)


def find_workers() -> list[int]:
    me = os.getpid()
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [pid for pid in pids if pid != me and _is_worker(pid)]


def alive(pid: int) -> bool:
    return _state(pid) not in {None, "Z", "X", "x", "T", "t"}


def broker_answers(url: str, timeout: float = 2.0) -> bool:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:  # sqlite, memory: nothing to reach
        return True
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("check", choices=["live", "ready"])
    parser.add_argument("--pid", type=int, help="the worker's PID (default: search /proc)")
    args = parser.parse_args(argv)
    pids = [args.pid] if args.pid else find_workers()
    if not pids:
        sys.stderr.write("probe: no aiotask worker process found\n")
        return 1
    stuck = [pid for pid in pids if not alive(pid)]
    if stuck:
        sys.stderr.write(f"probe: worker {stuck} gone, stopped or a zombie\n")
        return 1
    if args.check == "ready":
        url = os.environ.get("AIOTASK_BROKER_URL", "sqlite:///aiotask.db")
        if not broker_answers(url):
            host = urlsplit(url).hostname
            sys.stderr.write(f"probe: broker at {host} does not accept connections\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
