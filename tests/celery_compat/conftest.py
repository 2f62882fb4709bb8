"""Fixtures for the Celery interoperability tests: app modules in a temp dir, queue clean-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.celery_compat.support import write_apps

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def apps_dir(tmp_path: Path) -> Path:
    write_apps(tmp_path)
    return tmp_path


@pytest.fixture
def celery_queue(namespace: str, amqp_url: str) -> Iterator[str]:
    """The shared queue's name; afterwards its queue, dead-letter queue and exchange go."""
    yield namespace + ".celery"
    _delete_amqp(amqp_url, namespace + ".celery")


def _delete_amqp(url: str, queue: str) -> None:
    """On a fresh loop in another thread (never the loop of an async test)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for name in (queue, queue + ".dead", queue + ".keys"):  # .keys: fairness stream
                await channel.queue_delete(name)
            await channel.exchange_delete(queue)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, delete()).result()
