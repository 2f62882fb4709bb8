"""Celery and aiotask on one queue in kombu's Redis transport layout (issue 22, slice 3): the
Celery client with an aiotask worker, an aiotask producer with a Celery worker, a mixed fleet,
and a killed Celery worker's unacked messages restored after the visibility timeout."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest
from redis import Redis

from aiotask import App
from tests.celery_compat.support import (
    CELERY_CLIENT,
    check_celery_client,
    check_mixed_fleet,
    env_for,
    run_producer,
    start_aiotask_worker,
    start_celery_worker,
    stop,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(300)


def _env(apps_dir: Path, namespace: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Both sides under kombu's global_keyprefix `<namespace>:` (queues, unacked, bindings)."""
    prefix = namespace + ":"
    sep = "&" if "?" in redis_url else "?"
    return env_for(
        apps_dir,
        namespace,
        redis_url,
        redis_url,
        TEST_KEYPREFIX=prefix,
        TEST_AIOTASK_BROKER=f"{redis_url}{sep}global_keyprefix={prefix}",
        **extra,
    )


def test_celery_client_with_an_aiotask_worker(
    apps_dir: Path, namespace: str, redis_url: str
) -> None:
    env = _env(apps_dir, namespace, redis_url)
    worker = start_aiotask_worker(apps_dir, env, namespace)
    try:
        out = run_producer(apps_dir, env, CELERY_CLIENT)
    finally:
        stop(worker)
    check_celery_client(out)
    client = Redis.from_url(redis_url)
    try:  # everything acked: kombu's unacked hash and index are empty
        assert client.hlen(namespace + ":unacked") == 0
        assert client.zcard(namespace + ":unacked_index") == 0
        assert client.sismember(
            f"{namespace}:_kombu.binding.{namespace}.celery",
            f"{namespace}.celery\x06\x16\x06\x16{namespace}.celery",
        )
    finally:
        client.close()


async def test_aiotask_producer_with_a_celery_worker(
    apps_dir: Path, namespace: str, redis_url: str
) -> None:
    env = _env(apps_dir, namespace, redis_url)
    worker = start_celery_worker(apps_dir, env, namespace)
    queue = namespace + ".celery"
    app = App("producer", broker=env["TEST_AIOTASK_BROKER"], backend=redis_url, celery_compat=True)
    try:
        async with app:
            where = await app.send_task("proj.where", queue=queue, task_id=namespace + "-w")
            assert await where.get(timeout=30) == "celery"
            res = await app.send_task("proj.add", [2, 3], queue=queue, task_id=namespace + "-a")
            assert await res.get(timeout=30) == 5
            urgent = await app.send_task(
                "proj.add", [1, 1], queue=queue, priority=9, task_id=namespace + "-p"
            )
            assert await urgent.get(timeout=30) == 2  # in kombu's `q\x06\x169` list
            failed = await app.send_task(
                "proj.fail", ["nope"], queue=queue, task_id=namespace + "-f"
            )
            with pytest.raises(ValueError, match="nope"):
                await failed.get(timeout=30)
    finally:
        stop(worker)


def test_a_mixed_fleet_drains_2000_celery_tasks_each_once(
    apps_dir: Path, namespace: str, redis_url: str
) -> None:
    env = _env(apps_dir, namespace, redis_url)
    check_mixed_fleet(apps_dir, env, namespace, redis_url, 2000)


def test_a_killed_celery_workers_unacked_messages_run_on_an_aiotask_worker(
    apps_dir: Path, namespace: str, redis_url: str
) -> None:
    """kill -9 a Celery worker mid-task (acks_late): its messages stay in kombu's unacked hash;
    past the visibility timeout the aiotask worker pushes them back and runs them."""
    env = _env(apps_dir, namespace, redis_url, TEST_VT="4", AIOTASK_VISIBILITY_TIMEOUT="4")
    counter = Redis.from_url(redis_url, decode_responses=True)
    celery_worker = start_celery_worker(apps_dir, env, namespace)
    aiotask_worker = None
    try:
        run_producer(
            apps_dir,
            env,
            """
            for i in range(4):
                slow.apply_async((str(i), 8), task_id=f"{NS}-{i}", ignore_result=True)
            """,
        )
        deadline = time.monotonic() + 60
        while counter.hlen(namespace + ":started") < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counter.hlen(namespace + ":started") == 4  # all four running on Celery
        assert counter.hlen(namespace + ":unacked") == 4
        celery_worker.proc.send_signal(signal.SIGKILL)
        celery_worker.proc.wait(30)
        aiotask_worker = start_aiotask_worker(apps_dir, env, namespace)
        deadline = time.monotonic() + 120
        while counter.hlen(namespace + ":runs") < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        runs = {k: int(v) for k, v in counter.hgetall(namespace + ":runs").items()}
        started = {k: int(v) for k, v in counter.hgetall(namespace + ":started").items()}
        left = counter.hlen(namespace + ":unacked")
    finally:
        stop(celery_worker)
        if aiotask_worker is not None:
            stop(aiotask_worker)
        counter.close()
    assert runs == {str(i): 1 for i in range(4)}  # each finished once, on aiotask
    assert started == {str(i): 2 for i in range(4)}  # started on Celery, then redelivered
    assert left == 0


async def test_messages_land_in_kombus_lists_and_bindings(namespace: str, redis_url: str) -> None:
    """What an aiotask producer writes is kombu's layout: the priority list, the binding, a
    kombu JSON message whose body is Celery's [args, kwargs, embed]."""
    import base64

    import orjson

    prefix = namespace + ":"
    queue = namespace + ".celery"
    broker = f"{redis_url}{'&' if '?' in redis_url else '?'}global_keyprefix={prefix}"
    app = App("producer", broker=broker, backend=redis_url, celery_compat=True)
    client = Redis.from_url(redis_url)
    try:
        async with app:
            await app.send_task("proj.add", [1, 2], queue=queue, task_id=namespace + "-0")
            await app.send_task(
                "proj.add", [3, 4], queue=queue, priority=7, task_id=namespace + "-7"
            )
        plain = client.lrange(prefix + queue, 0, -1)
        step6 = client.lrange(f"{prefix}{queue}\x06\x166", 0, -1)
        bound = client.smembers(f"{prefix}_kombu.binding.{queue}")
    finally:
        client.close()
    assert len(plain) == 1 and len(step6) == 1  # priority 7 -> kombu's step 6 list
    assert bound == {f"{queue}\x06\x16\x06\x16{queue}".encode()}
    doc = orjson.loads(step6[0])
    assert doc["headers"]["task"] == "proj.add" and doc["headers"]["id"] == namespace + "-7"
    assert doc["properties"]["delivery_info"] == {"exchange": queue, "routing_key": queue}
    assert orjson.loads(base64.b64decode(doc["body"]))[:2] == [[3, 4], {}]
