"""`python -m tests.chaos [--short] [--brokers ...] [--faults ...] [--tasks N] [--duration S]`.

Exits 1 when any broker lost a task, left a canvas unfinished, or ran more duplicate executions
than its bound (in-flight x kills), or with --strict when a running worker exited by itself;
2 when a needed server is missing under AIOTASK_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.report import summary
from tests.chaos.scenario import FULL, SHORT, run_broker

ALL_FAULTS = ("kill", "restart", "blackhole", "reset", "sigstop")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the small run CI does")
    parser.add_argument("--brokers", default="sqlite,redis,amqp")
    parser.add_argument(
        "--faults",
        default=",".join(ALL_FAULTS),
        help=f"the kinds to inject, of {','.join(ALL_FAULTS)} (all by default); the profile "
        "says how often each runs",
    )
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--duration", type=float, help="seconds of load")
    parser.add_argument("--canvas-every", type=float)
    parser.add_argument("--kill-every", type=float)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--lease", type=float, help="visibility timeout, seconds")
    parser.add_argument("--outage", type=float, help="seconds a server is down / black-holed")
    parser.add_argument("--drain-timeout", type=float, help="seconds to wait for the last tasks")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output", type=Path, help="also write the summary to this file")
    parser.add_argument(
        "--strict", action="store_true", help="also fail when a running worker exits by itself"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    for noisy in ("aiotask", "aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)  # the harness' own faults, expected
    profile = SHORT if args.short else FULL
    overrides = {
        "tasks": args.tasks,
        "duration": args.duration,
        "canvas_every": args.canvas_every,
        "kill_every": args.kill_every,
        "workers": args.workers,
        "lease": args.lease,
        "outage": args.outage,
        "drain_timeout": args.drain_timeout,
        "seed": args.seed,
    }
    profile = dataclasses.replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(ALL_FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")

    base = Path(tempfile.mkdtemp(prefix="aiotask-chaos-"))
    started = time.monotonic()
    tallies = []
    for broker in args.brokers.split(","):
        logging.getLogger("chaos").info("%s: starting (run directory %s)", broker, base / broker)
        tallies.append(asyncio.run(run_broker(broker, profile, faults, base)))
    text = summary(profile, tallies, _commit(), time.monotonic() - started)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    failed = [
        t for t in tallies if not t.skipped and (not t.ok or (args.strict and t.running_deaths))
    ]
    missing = [t for t in tallies if t.skipped]
    if failed or args.keep:
        print(f"\nlogs kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    if missing and os.environ.get("AIOTASK_REQUIRE_SERVICES") == "1":
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
