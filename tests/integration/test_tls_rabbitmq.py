"""amqps:// end to end against a private RabbitMQ node whose TLS listener requires client certs.

One node per module (about 10 s to boot) and one TLS redis-server for results; a CA made here.
Covers: a worker process consuming over amqps:// and storing its result in a rediss:// backend
(options from broker_tls / backend_tls), for a producer with the options in its URLs; mutual
TLS; a wrong CA failing at once with one line that names TLS, from the API and from the CLI.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from tests.procs import run_cli, start_worker, stop, worker_env, write_tasks
from tests.rabbit_server import PrivateRabbit
from tests.tls_support import PKI, TLSRedis, start_tls_rabbit

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.rabbit_server import PrivateRabbit

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

PASSWORD = "guest"  # the node's only user; the tests check it is masked all the same


@pytest.fixture(scope="module")
def node(tls_dir: Path, pki: PKI) -> Iterator[tuple[PrivateRabbit, int]]:
    node, port = start_tls_rabbit(tls_dir / "rabbit", pki)
    try:
        yield node, port
    finally:
        node.kill()


@pytest.fixture(scope="module")
def amqps_port(node: tuple[PrivateRabbit, int]) -> int:
    return node[1]


def tls_setting(pki: PKI, *, ca: Path | None = None) -> dict[str, str]:
    return {
        "ca_certs": str(ca or pki.ca),
        "certfile": str(pki.client_cert),
        "keyfile": str(pki.client_key),
    }


def amqps(port: int, query: str = "") -> str:
    return f"amqps://guest:{PASSWORD}@127.0.0.1:{port}/" + (f"?{query}" if query else "")


async def connect_error(url: str, **settings: object) -> str:
    conf = Settings(broker_url=url, result_backend=None, **settings)  # type: ignore[arg-type]
    broker = RabbitMQBroker(url, conf, "app")
    try:
        async with asyncio.timeout(30):  # not retried for broker_unreachable_timeout
            with pytest.raises(BrokerConnectionError) as caught:
                await broker.connect()
    finally:
        await broker.close()
    return str(caught.value)


async def test_worker_process_consumes_over_amqps_and_stores_over_rediss(
    tmp_path: Path, amqps_port: int, tls_redis: TLSRedis, pki: PKI
) -> None:
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        write_tasks(tmp_path),
        amqps(amqps_port),
        AIOTASK_KEY_PREFIX=prefix,
        AIOTASK_BROKER_TLS=json.dumps(tls_setting(pki)),
        AIOTASK_RESULT_BACKEND=f"rediss://127.0.0.1:{tls_redis.port}/0",
        AIOTASK_BACKEND_TLS=json.dumps(tls_setting(pki)),
    )
    proc = start_worker(tmp_path, env, "-c", "4", "-P", "1")
    try:
        query = f"ssl_ca_certs={pki.ca}&ssl_certfile={pki.client_cert}&ssl_keyfile={pki.client_key}"
        async with App(
            "proc", broker=amqps(amqps_port, query), backend=tls_redis.url(), key_prefix=prefix
        ) as app:
            result = await app.send_task("proc.add", args=[20, 22])
            assert await result.get(timeout=20) == 42
        ping = run_cli(tmp_path, env, "inspect", "-A", "proc_tasks:app", "ping", "--json")
        assert ping.returncode == 0, ping.stderr
        assert "aiotask@" in ping.stdout
    finally:
        assert stop(proc) == 0


async def test_aio_pika_query_names_are_honoured(amqps_port: int, pki: PKI) -> None:
    query = f"cafile={pki.ca}&certfile={pki.client_cert}&keyfile={pki.client_key}"
    url = amqps(amqps_port, query)
    broker = RabbitMQBroker(url, Settings(broker_url=url, result_backend=None), "app")
    try:
        await broker.connect()
    finally:
        await broker.close()


async def test_the_node_requires_a_client_certificate(amqps_port: int, pki: PKI) -> None:
    message = await connect_error(amqps(amqps_port, f"ssl_ca_certs={pki.ca}"))
    # TLS 1.3: the node refuses after the client's handshake, by an alert or by a reset
    assert f"RabbitMQ 127.0.0.1:{amqps_port}" in message or "connection reset" in message.lower()
    assert "client certificate" in message
    assert "ssl_certfile" in message


async def test_a_wrong_ca_fails_at_once_with_a_line_that_names_tls(
    amqps_port: int, pki: PKI, tls_dir: Path
) -> None:
    message = await connect_error(
        amqps(amqps_port, f"ssl_ca_certs={pki.other_ca}"),
        broker_tls=tls_setting(pki),
        broker_unreachable_timeout=600.0,
    )
    assert message.startswith(
        f"TLS handshake with RabbitMQ 127.0.0.1:{amqps_port} failed: certificate verify failed"
    )
    assert "check ssl_ca_certs" in message
    assert f":{PASSWORD}@" not in message
    assert str(tls_dir) not in message


async def test_worker_cli_with_a_wrong_ca_exits_1_with_the_tls_line(
    tmp_path: Path, amqps_port: int, pki: PKI, tls_dir: Path
) -> None:
    env = worker_env(
        write_tasks(tmp_path),
        amqps(amqps_port),
        AIOTASK_RESULT_BACKEND="none",
        AIOTASK_BROKER_TLS=json.dumps(tls_setting(pki, ca=pki.other_ca)),
    )
    done = run_cli(tmp_path, env, "worker", "-A", "proc_tasks:app")  # within 30 s: no retries
    assert done.returncode == 1
    assert (
        f"BrokerConnectionError: TLS handshake with RabbitMQ 127.0.0.1:{amqps_port} failed: "
        "certificate verify failed"
    ) in done.stderr
    assert "Traceback" not in done.stderr
    assert f":{PASSWORD}@" not in done.stdout + done.stderr
    assert str(tls_dir) not in done.stdout + done.stderr


async def test_amqps_to_the_plain_port_asks_whether_it_is_a_tls_port(
    node: tuple[PrivateRabbit, int], pki: PKI
) -> None:
    plain = node[0].port
    message = await connect_error(amqps(plain), broker_tls=tls_setting(pki))
    assert message.startswith(f"TLS handshake with RabbitMQ 127.0.0.1:{plain} failed")
    assert "is that port a TLS port?" in message


async def test_the_events_connection_uses_tls_too(amqps_port: int, pki: PKI) -> None:
    """Events follow on a connection of their own (aiotask events, the dashboard)."""
    url = amqps(amqps_port)
    conf = Settings(
        broker_url=url,
        result_backend=None,
        broker_tls=tls_setting(pki),
        key_prefix=f"tls-{uuid.uuid4().hex[:8]}",
    )
    broker = RabbitMQBroker(url, conf, "app")
    try:
        await broker.connect()
        async with broker.events() as feed:
            await broker.emit_events([b'{"type": "tls-check"}'])
            async with asyncio.timeout(10):
                assert await anext(feed) == b'{"type": "tls-check"}'
    finally:
        await broker.close()
