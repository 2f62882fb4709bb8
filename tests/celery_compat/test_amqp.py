"""Celery and aiotask on one RabbitMQ queue, in Celery's layout (issue 22, slices 1, 2, 4, 5):
an unmodified Celery producer and result reader with an `aiotask worker`, an aiotask producer
with a Celery worker, a chain crossing over, a chord refused, and a mixed fleet."""

from __future__ import annotations

import asyncio
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

    from aiotask.brokers.base import DeadLetter

pytestmark = pytest.mark.timeout(300)


def test_celery_producer_and_result_reader_with_an_aiotask_worker(
    apps_dir: Path, namespace: str, amqp_url: str, redis_url: str, celery_queue: str
) -> None:
    env = env_for(apps_dir, namespace, amqp_url, redis_url)
    worker = start_aiotask_worker(apps_dir, env, namespace)
    try:
        out = run_producer(apps_dir, env, CELERY_CLIENT)
    finally:
        stop(worker)
    check_celery_client(out)


async def test_aiotask_producer_with_a_celery_worker(
    apps_dir: Path, namespace: str, amqp_url: str, redis_url: str, celery_queue: str
) -> None:
    env = env_for(apps_dir, namespace, amqp_url, redis_url)
    worker = start_celery_worker(apps_dir, env, namespace)
    app = App("producer", broker=amqp_url, backend=redis_url, celery_compat=True)
    try:
        async with app:
            where = await app.send_task("proj.where", queue=celery_queue, task_id=namespace + "-w")
            assert await where.get(timeout=30) == "celery"
            res = await app.send_task(
                "proj.add", [2, 3], queue=celery_queue, task_id=namespace + "-a"
            )
            assert await res.get(timeout=30) == 5
            failed = await app.send_task(
                "proj.fail", ["nope"], queue=celery_queue, task_id=namespace + "-f"
            )
            with pytest.raises(ValueError, match="nope"):
                await failed.get(timeout=30)
            t0 = time.time()
            later = await app.send_task(
                "proj.mul", [3, 4], queue=celery_queue, countdown=2, task_id=namespace + "-l"
            )
            assert await later.get(timeout=30) == 12
            assert time.time() - t0 >= 1.5
    finally:
        stop(worker)


async def test_a_celery_chord_is_dead_lettered_with_its_reason(
    apps_dir: Path, namespace: str, amqp_url: str, redis_url: str, celery_queue: str
) -> None:
    env = env_for(apps_dir, namespace, amqp_url, redis_url)
    worker = start_aiotask_worker(apps_dir, env, namespace)
    try:
        out = run_producer(
            apps_dir,
            env,
            """
            from celery import chord
            chord(
                [add.s(1, 1).set(task_id=NS + "-h1")], add.s(1).set(task_id=NS + "-b")
            ).apply_async(task_id=NS + "-b")
            try:  # the refused header task's result says why, instead of never coming
                app.AsyncResult(NS + "-h1").get(timeout=30)
            except Exception as exc:
                print(type(exc).__name__, str(exc))
            """,
        )
        app = App("reader", broker=amqp_url, backend=redis_url, celery_compat=True)
        async with app:
            deadline = time.monotonic() + 30
            dead: list[DeadLetter] = []
            while not dead and time.monotonic() < deadline:
                dead = await app.broker.dead_letters(celery_queue)
                await asyncio.sleep(0.2)
            listed = await app.dead_letters.list(queue=celery_queue)
            purged = await app.dead_letters.purge(queue=celery_queue)
            left = await app.broker.dead_letters(celery_queue)
    finally:
        stop(worker)
    assert [d.message_id for d in dead] == [namespace + "-h1"]
    assert "chord" in dead[0].reason
    assert out.startswith("MessageRefused ") and "chord" in out
    assert [(i.id, i.task) for i in listed] == [(namespace + "-h1", "proj.add")]
    assert purged.ids == [namespace + "-h1"] and left == []


def test_a_mixed_fleet_drains_2000_celery_tasks_each_once(
    apps_dir: Path, namespace: str, amqp_url: str, redis_url: str, celery_queue: str
) -> None:
    env = env_for(apps_dir, namespace, amqp_url, redis_url)
    check_mixed_fleet(apps_dir, env, namespace, redis_url, 2000)


def test_a_killed_aiotask_workers_unacked_messages_go_to_a_celery_worker(
    apps_dir: Path, namespace: str, amqp_url: str, redis_url: str, celery_queue: str
) -> None:
    """kill -9 an aiotask worker mid-task: nothing was acked, RabbitMQ hands the messages to
    the Celery worker on the same queue, which runs each to the end. The tasks run until the
    test releases them (after the kill): surely still running when the worker dies."""
    env = env_for(apps_dir, namespace, amqp_url, redis_url)
    counter = Redis.from_url(redis_url, decode_responses=True)
    aiotask_worker = start_aiotask_worker(apps_dir, env, namespace)
    celery_worker = None
    try:
        run_producer(
            apps_dir,
            env,
            """
            for i in range(4):
                slow.apply_async((str(i), 120), task_id=f"{NS}-{i}", ignore_result=True)
            """,
        )
        deadline = time.monotonic() + 60
        while counter.hlen(namespace + ":started") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counter.hlen(namespace + ":started") == 4  # all four running on aiotask
        aiotask_worker.proc.send_signal(signal.SIGKILL)
        aiotask_worker.proc.wait(30)
        counter.set(namespace + ":release", 1)  # the runs on Celery finish at once
        celery_worker = start_celery_worker(apps_dir, env, namespace)
        deadline = time.monotonic() + 60
        while counter.hlen(namespace + ":runs") < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        runs = {k: int(v) for k, v in counter.hgetall(namespace + ":runs").items()}
        started = {k: int(v) for k, v in counter.hgetall(namespace + ":started").items()}
    finally:
        stop(aiotask_worker)
        if celery_worker is not None:
            stop(celery_worker)
        counter.close()
    assert runs == {str(i): 1 for i in range(4)}  # each finished once, on Celery
    assert started == {str(i): 2 for i in range(4)}  # begun on aiotask, redelivered
