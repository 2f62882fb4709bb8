"""What `redis_wait_replicas=1` costs a producer: send rate with and without WAIT.

    python -m benchmarks.wait_ratio            # ~15 s

Starts its own primary and replica (redis-server on free ports in a temp dir, killed by PID),
then sends no-op tasks two ways: one at a time (each send() awaited: the latency a request
handler sees) and 50 at once (asyncio.gather). Variants alternate; the figure is the ratio of
median rates, WAIT / no WAIT. A shared machine: read the ratios, not the rates.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from aiotask import App
from aiotask.exceptions import BrokerConnectionError

N = 2000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def _rate(url: str, wait: int, batch: int) -> float:
    async with App("wait", broker=url, backend=None, redis_wait_replicas=wait) as app:
        await app.send_task("wait.noop")  # connect, load scripts
        start = time.perf_counter()
        for _ in range(N // batch):
            await asyncio.gather(*(app.send_task("wait.noop") for _ in range(batch)))
        return N / (time.perf_counter() - start)


async def _in_sync(url: str) -> None:
    async with App("wait", broker=url, backend=None, redis_wait_replicas=1) as app:
        for _ in range(100):
            try:
                await app.send_task("wait.noop")
                return
            except BrokerConnectionError:  # the replica is still syncing
                await asyncio.sleep(0.2)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p1, p2 = _port(), _port()
        primary = _server(Path(tmp) / "p", p1)
        replica = _server(Path(tmp) / "r", p2, "--replicaof", "127.0.0.1", str(p1))
        url = f"redis://127.0.0.1:{p1}/0"
        try:
            asyncio.run(_in_sync(url))
            for batch in (1, 50):
                rates: dict[int, list[float]] = {0: [], 1: []}
                for pair in range(3):
                    for wait in (0, 1) if pair % 2 == 0 else (1, 0):
                        rates[wait].append(asyncio.run(_rate(url, wait, batch)))
                off, on = statistics.median(rates[0]), statistics.median(rates[1])
                print(f"{batch:3} at once: no WAIT {off:7.0f}/s, WAIT 1 {on:7.0f}/s, "
                      f"ratio {on / off:.2f}")  # fmt: skip
        finally:
            for proc in (replica, primary):
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
