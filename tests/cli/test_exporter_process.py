"""`aiotask exporter` as a real process next to a real worker (-E): scraped over HTTP."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.cli.test_events_process import _clean, env_for, producer
from tests.procs import start_worker, stop
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["sqlite", "redis"])
async def broker_url(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/exporter.db"
        return
    url: str = request.getfixturevalue("redis_url")
    try:
        yield url
    finally:
        await _clean(url, namespace)


def start_exporter(directory: Path, env: dict[str, str], port: int) -> subprocess.Popen[str]:
    """`aiotask exporter`, returned once it says it serves (subscribed to the events)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiotask",
            "exporter",
            "-A",
            "proc_tasks:app",
            "--port",
            str(port),
            "--addr",
            "127.0.0.1",
            "--interval",
            "0.3",
        ],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "serving the cluster metrics" in line:
            return proc
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"aiotask exporter did not start: {''.join(seen)}{err}")


def scrape(port: int) -> dict[str, float]:
    """The samples of /metrics, by 'name{labels}'."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


async def test_exporter_serves_task_counts_queue_depths_and_workers(
    tmp_path: Path, broker_url: str, namespace: str
) -> None:
    env = env_for(tmp_path, broker_url, namespace)
    port = free_port()
    exporter = start_exporter(tmp_path, env, port)
    worker = start_worker(tmp_path, env, "-E", "-n", "expw@test", "-c", "5", "-P", "1")
    try:
        async with producer(broker_url, namespace, events=True) as app:
            ok = [await app.send_task("proc.add", args=[i, i]) for i in range(3)]
            bad = await app.send_task("proc.boom")
            assert [await r.get(timeout=20) for r in ok] == [0, 2, 4]
            with pytest.raises(ValueError):
                await bad.get(timeout=20)
            # three waiting in a queue no worker reads: the depth gauge counts them
            for _ in range(3):
                await app.send_task("proc.add", args=[1, 1], queue="idle")
        ok_key = 'aiotask_cluster_tasks_total{queue="default",state="succeeded",task="proc.add"}'
        failed_key = 'aiotask_cluster_tasks_total{queue="default",state="failed",task="proc.boom"}'
        depth_key = 'aiotask_queue_depth{queue="idle"}'
        samples: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            samples = await asyncio.to_thread(scrape, port)
            if samples.get(ok_key) == 3 and samples.get(depth_key) == 3:
                break
            await asyncio.sleep(0.2)
        assert samples.get(ok_key) == 3, samples
        assert samples.get(failed_key) == 1, samples
        assert samples.get(depth_key) == 3, samples
        assert samples.get("aiotask_workers_online") == 1, samples
        assert samples.get('aiotask_worker_active_tasks{worker="expw@test"}') == 0, samples
        assert (
            samples.get(
                'aiotask_cluster_task_duration_seconds_count{queue="default",task="proc.add"}'
            )
            == 3
        ), samples
    finally:
        worker_code = stop(worker)
        exporter_code = stop(exporter, signal.SIGTERM)
    assert (worker_code, exporter_code) == (0, 0)


def test_exporter_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    env = env_for(tmp_path, f"sqlite:///{tmp_path}/x.db", "exp")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "aiotask",
                "exporter",
                "-A",
                "proc_tasks:app",
                "--port",
                str(port),
                "--addr",
                "127.0.0.1",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
