"""`make demo`: a worker and a producer, two processes, one SQLite file, no server.

Starts `aiotask worker` as a subprocess, sends tasks from this process, prints the
results, and stops the worker with SIGTERM (a warm shutdown).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    print("$ aiotask worker -A examples.demo_tasks:app -c 20 -P 2   (log: worker.log)")
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiotask",
                "worker",
                "-A",
                "examples.demo_tasks:app",
                "-c",
                "20",
                "-P",
                "2",
                "-l",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stderr=out,
        )


async def produce() -> None:
    from aiotask import chord, group
    from examples.demo_tasks import add, app, broken, fib, flaky, tsum

    async with app:
        r = await add.send(2, 3)
        print(f"add(2, 3)            -> {await r.get(timeout=30)}")
        started = time.perf_counter()
        await (await add.send(1, 1)).get(timeout=30)
        print(
            f"  warm round trip: {1000 * (time.perf_counter() - started):.1f} ms "
            "(the embedded default: the worker is woken through a local socket, no server)"
        )

        results = await add.send_batch([(i, i) for i in range(100)])
        values = [await x.get(timeout=30) for x in results]
        print(f"100 x add(i, i)      -> sum {sum(values)} (sent in one batch)")

        workflow = chord(group(add.s(i, i) for i in range(10)), tsum.s()) | add.s(1000)
        total = await (await workflow.send()).get(timeout=30)
        print(f"chord(10 x add) | tsum | add(1000) -> {total}")

        out = await (await fib.send(30)).get(timeout=60)
        print(
            f"fib(30) in the pool  -> {out['fib']} (child pid {out['pid']}, "
            f"producer pid {os.getpid()})"
        )

        print(f"flaky(succeed_on=3)  -> {await (await flaky.send(3)).get(timeout=30)}")

        try:
            await (await broken.send("boom")).get(timeout=30)
        except ValueError as exc:
            print(f"broken('boom')       -> raised {type(exc).__name__}: {exc}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="aiotask-demo-") as tmp:
        url = f"sqlite:///{tmp}/demo.db"
        env = {
            **os.environ,
            "AIOTASK_BROKER_URL": url,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        os.environ["AIOTASK_BROKER_URL"] = url
        print(f"embedded broker and results: {url}")
        log = Path(tmp) / "worker.log"
        worker = start_worker(env, log)
        try:
            asyncio.run(produce())
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
        text = log.read_text().splitlines()
        print(
            f"worker stopped (warm shutdown), exit code {code}; worker.log has {len(text)} "
            "lines, its banner:"
        )
        print("\n".join("  | " + line for line in text[:6]))
        return code


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
