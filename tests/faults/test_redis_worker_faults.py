"""A real worker process while its (private) Redis server dies, restarts, or stays down."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiotask import App
from tests.procs import start_worker, stop, wait_with_stderr, worker_env, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.servers import PrivateRedis


async def test_worker_resumes_after_redis_restarts(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(write_tasks(tmp_path), redis_server.url, AIOTASK_KEY_PREFIX=namespace)
    worker = start_worker(tmp_path, env, "-c", "4")
    try:
        async with App("proc", broker=redis_server.url, key_prefix=namespace) as app:
            first = await app.send_task("proc.add", args=[1, 1])
            assert await app.AsyncResult(first.id).get(timeout=10) == 2
            redis_server.kill()  # kill -9 the server under the running worker
            await asyncio.sleep(0.5)
            redis_server.start()  # same port, same data directory (append-only file)
            second = await app.send_task("proc.add", args=[2, 2])
            assert await app.AsyncResult(second.id).get(timeout=20) == 4
        assert worker.poll() is None  # it never died
    finally:
        assert stop(worker) == 0


#: broker_unreachable_timeout for the stays-down test, in seconds.
UNREACHABLE_FOR = 3.0
#: How long after that timeout the worker may take to log and exit (generous: shared CPU). Far
#: below the 10 s guards on a single round trip, so an exit only through those fails.
EXIT_SLACK = 6.0


def test_worker_exits_with_code_1_after_broker_unreachable_timeout(
    tmp_path: Path, redis_server: PrivateRedis, namespace: str
) -> None:
    env = worker_env(
        write_tasks(tmp_path),
        redis_server.url,
        AIOTASK_KEY_PREFIX=namespace,
        AIOTASK_BROKER_UNREACHABLE_TIMEOUT=f"{UNREACHABLE_FOR:g}",
    )
    worker = start_worker(tmp_path, env, "-c", "4")
    redis_server.kill()
    killed = time.monotonic()
    # A supervisor restarts a worker that exits; one "connected but idle" forever never is.
    code, stderr = wait_with_stderr(worker, timeout=UNREACHABLE_FOR + 30)
    took = time.monotonic() - killed
    assert code == 1, stderr  # a fatal error (2 is bad input, negative a signal)
    # It kept retrying for the whole timeout, then gave up soon after it.
    assert UNREACHABLE_FOR - 0.5 <= took <= UNREACHABLE_FOR + EXIT_SLACK, (took, stderr)
    address = f"127.0.0.1:{redis_server.port}"
    assert f"Redis at redis://{address}" in stderr, stderr  # which server, redacted URL
    assert "unreachable" in stderr, stderr
    assert "broker_unreachable_timeout" in stderr, stderr  # the setting to look at
    assert "stopped" in stderr, stderr  # the worker's own last word, not a crash elsewhere
