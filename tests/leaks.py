"""What tests left on the shared Redis and RabbitMQ: names that carry one of the session's
namespaces (t + 12 hex digits, from the `namespace` fixture), anywhere in the name."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable

NAMESPACE = re.compile(r"t[0-9a-f]{12}")
#: RabbitMQ delay buckets (`<prefix>.<queue>.delay.<ms>`) carry x-expires: the server deletes
#: them itself within ms + 120 s of their last use, so they are not leaks
SELF_EXPIRING = re.compile(r"\.delay\.\d+$")
LOCAL = {"127.0.0.1", "localhost", "::1"}


def report(found: list[str], owners: dict[str, str], per_test: int = 3) -> str:
    """The leaks grouped by the test whose namespace they carry, a few names each."""
    by_test: dict[str, list[str]] = {}
    for item in sorted(found):
        owner = next((owners[m] for m in NAMESPACE.findall(item) if m in owners), "?")
        by_test.setdefault(owner, []).append(item)
    lines = [f"tests left {len(found)} keys/queues on the shared servers (clean up in the test):"]
    for test, items in sorted(by_test.items()):
        more = f" (+{len(items) - per_test} more)" if len(items) > per_test else ""
        lines.append(f"  {test}: {', '.join(items[:per_test])}{more}")
    return "\n".join(lines)


def _ours(names: Iterable[str], namespaces: set[str]) -> list[str]:
    return [n for n in names if any(m in namespaces for m in NAMESPACE.findall(n))]


def redis_keys(url: str, namespaces: set[str]) -> list[str]:
    """Keys of the test database that name one of `namespaces` (one SCAN over the database)."""
    from redis import Redis

    client = Redis.from_url(url, socket_timeout=10)
    try:
        keys = [k.decode(errors="replace") for k in client.scan_iter(count=2000)]
    finally:
        client.close()
    return _ours(keys, namespaces)


def amqp_queues(url: str, namespaces: set[str]) -> list[str]:
    """Queues of the test vhost that name one of `namespaces`.

    rabbitmqctl lists every queue of a local server in one call. Without it (a remote server,
    no permission) each namespace's default queues are checked by passive declares: that
    finds the common leak (a broker test that did not delete its queues), not every name.
    """
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    if parts.hostname in LOCAL and shutil.which("rabbitmqctl"):
        try:
            done = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--no-table-headers"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        except (subprocess.SubprocessError, OSError):
            pass
        else:
            names = [n for n in done.stdout.split() if not SELF_EXPIRING.search(n)]
            return _ours(names, namespaces)
    return asyncio.run(_passive(url, namespaces))  # session end: no test loop is running


async def clean_redis(url: str, namespace: str) -> None:
    """Delete every key of the test database that carries `namespace` (SCAN MATCH, UNLINK)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"*{namespace}*", count=5000):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


#: the queues a test of `namespace` (its key_prefix) makes for the default queue (`.keys`: the
#: fairness announcement stream a RabbitMQ worker declares for each queue it consumes)
DEFAULT_QUEUES = ("{ns}.default", "{ns}.default.dead", "{ns}.default.keys")


async def clean_amqp(url: str, namespace: str) -> None:
    """Delete the default queue and its dead-letter queue under `namespace` (idempotent)."""
    await delete_queues(url, [q.format(ns=namespace) for q in DEFAULT_QUEUES])


async def delete_queues(url: str, names: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)  # RabbitMQ: deleting a missing queue is fine
    finally:
        await connection.close()


async def _passive(url: str, namespaces: set[str]) -> list[str]:
    import aio_pika
    from aio_pika.exceptions import ChannelClosed

    found = []
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for ns in sorted(namespaces):
            for name in (q.format(ns=ns) for q in DEFAULT_QUEUES):
                try:
                    await channel.declare_queue(name, passive=True)
                except ChannelClosed:
                    channel = await connection.channel()
                else:
                    found.append(name)
    finally:
        await connection.close()
    return found


def postgres_schemas(url: str, namespaces: set[str]) -> list[str]:
    """Schemas of the test database named after one of `namespaces` (the PostgreSQL broker and
    backend keep an app's tables in a schema named by its key_prefix). Run on a loop of its
    own in a thread: asyncio.run here would unset the main thread's (pytest-asyncio's) loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _postgres_schemas(url, namespaces)).result()


async def _postgres_schemas(url: str, namespaces: set[str]) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace")
    finally:
        await conn.close()
    return [f"schema {n}" for n in _ours([r[0] for r in rows], namespaces)]


async def clean_postgres(url: str, namespace: str) -> None:
    """Drop the test's schema (and everything in it); a no-op when there is none."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    finally:
        await conn.close()
