"""rediss:// end to end against a private TLS-only redis-server that requires client certificates.

One server per module (a CA made here, nothing committed); each test has its own key prefix.
Covers: a worker process running a task and storing its result over TLS (options from
settings) for a producer whose options are in the URL; mutual TLS; a wrong CA and a host name
mismatch failing at once with one line that names TLS, from the API and from `aiotask worker`;
a dropped connection's socket closed at once, though the server never answers its goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from typing import TYPE_CHECKING

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiotask import App
from aiotask._redis.client import make_client
from aiotask._tls import for_broker
from aiotask.backends.redis import RedisBackend
from aiotask.brokers.redis_streams import RedisStreamsBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from tests.procs import run_cli, start_worker, stop, worker_env, write_tasks

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.tls_support import PKI, TLSRedis

pytestmark = pytest.mark.redis

PASSWORD = "S3CR3T-pw-77"


def tls_setting(pki: PKI, *, ca: Path | None = None, client: bool = True) -> dict[str, str]:
    setting = {"ca_certs": str(ca or pki.ca)}
    if client:
        setting.update(certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    return setting


def client(kind: str, url: str, conf: Settings) -> RedisStreamsBroker | RedisBackend:
    return RedisStreamsBroker(url, conf, "app") if kind == "broker" else RedisBackend(url, conf)


async def connect_error(kind: str, url: str, **settings: object) -> str:
    """The message of the BrokerConnectionError connecting a broker or backend raises."""
    conf = Settings(broker_url=url, **settings)  # type: ignore[arg-type]
    c = client(kind, url, conf)
    try:
        # not retried for broker_unreachable_timeout: a certificate does not get better
        async with asyncio.timeout(30):
            with pytest.raises(BrokerConnectionError) as caught:
                await c.connect()
    finally:
        await c.close()
    return str(caught.value)


async def test_worker_process_runs_a_task_and_stores_its_result_over_tls(
    tmp_path: Path, tls_redis: TLSRedis, pki: PKI
) -> None:
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    # the worker: a bare rediss:// URL, the files in AIOTASK_BROKER_TLS (the backend follows)
    env = worker_env(
        write_tasks(tmp_path),
        f"rediss://127.0.0.1:{tls_redis.port}/0",
        AIOTASK_KEY_PREFIX=prefix,
        AIOTASK_BROKER_TLS=json.dumps(tls_setting(pki)),
    )
    proc = start_worker(tmp_path, env, "-c", "4", "-P", "1")
    try:
        # the producer: redis-py's ssl_* names in the URL
        async with App("proc", broker=tls_redis.url(), key_prefix=prefix) as app:
            result = await app.send_task("proc.add", args=[2, 3])
            assert await result.get(timeout=15) == 5
        ping = run_cli(tmp_path, env, "inspect", "-A", "proc_tasks:app", "ping", "--json")
        assert ping.returncode == 0, ping.stderr  # the control channel runs over TLS too
        assert "aiotask@" in ping.stdout
    finally:
        assert stop(proc) == 0


@pytest.mark.parametrize("kind", ["broker", "backend"])
async def test_the_server_requires_a_client_certificate(
    tls_redis: TLSRedis, pki: PKI, kind: str
) -> None:
    without = tls_redis.url(client=False)
    message = await connect_error(kind, without, broker_unreachable_timeout=2.0)
    # TLS 1.3: the refusal comes after the client's handshake; named either way
    assert "client certificate" in message
    assert str(pki.ca) not in message
    conf = Settings(broker_url=tls_redis.url())
    c = client(kind, tls_redis.url(), conf)
    try:
        await c.connect()  # the same server with the client certificate: accepted
    finally:
        await c.close()


@pytest.mark.parametrize("kind", ["broker", "backend"])
async def test_a_wrong_ca_fails_at_once_with_a_line_that_names_tls(
    tls_redis: TLSRedis, pki: PKI, tls_dir: Path, kind: str
) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={pki.other_ca}"
    message = await connect_error(
        kind, url, broker_tls=tls_setting(pki), broker_unreachable_timeout=600.0
    )
    assert message.startswith(f"TLS handshake with {'Redis' if kind == 'broker' else 'result'}")
    assert f"127.0.0.1:{tls_redis.port} failed: certificate verify failed" in message
    assert "check ssl_ca_certs" in message
    assert PASSWORD not in message
    assert str(tls_dir) not in message  # no file path either


async def test_a_host_name_the_certificate_does_not_list_is_named(
    tls_redis: TLSRedis, pki: PKI
) -> None:
    url = tls_redis.url(host="127.0.0.2")
    message = await connect_error("broker", url, broker_unreachable_timeout=600.0)
    assert "TLS handshake with Redis 127.0.0.2" in message
    assert "not valid for '127.0.0.2'" in message
    assert "ssl_check_hostname=false" in message
    unchecked = url + "&ssl_check_hostname=false"  # still verified against the CA
    async with App("proc", broker=unchecked, key_prefix=f"tls-{uuid.uuid4().hex[:8]}") as app:
        assert app.backend is not None
        assert await app.backend.get("nothing-here") is None


async def test_worker_cli_with_a_wrong_ca_exits_1_with_the_tls_line(
    tmp_path: Path, tls_redis: TLSRedis, pki: PKI, tls_dir: Path
) -> None:
    env = worker_env(
        write_tasks(tmp_path),
        f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0",
        AIOTASK_BROKER_TLS=json.dumps(tls_setting(pki, ca=pki.other_ca)),
    )
    done = run_cli(tmp_path, env, "worker", "-A", "proc_tasks:app")  # within 30 s: no retries
    assert done.returncode == 1
    assert (
        f"BrokerConnectionError: TLS handshake with Redis 127.0.0.1:{tls_redis.port} failed: "
        "certificate verify failed"
    ) in done.stderr
    assert "Traceback" not in done.stderr
    output = done.stdout + done.stderr
    assert PASSWORD not in output
    assert str(tls_dir) not in output


@contextlib.contextmanager
def paused(server: TLSRedis) -> Iterator[None]:
    """The private server stopped (SIGSTOP, by our PID): it answers nothing, TLS goodbyes
    included, until the block ends."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("nowait", [True, False])
async def test_a_dropped_tls_connection_closes_its_socket_without_the_servers_goodbye(
    tls_redis: TLSRedis, nowait: bool
) -> None:
    """redis-py drops a broken connection with disconnect(nowait=True): asyncio then keeps a
    TLS socket open until the server answers the close_notify (up to 30 s). A loop that ends
    first (a test, a worker stopping) never closes it: the unclosed-transport warning that
    failed CI runs at random. The socket must be closed at once, with or without nowait."""
    resolved = for_broker(Settings(broker_url=tls_redis.url()))
    client = make_client(resolved.url, tls=resolved.tls)
    conn = client.connection_pool.make_connection()  # type: ignore[union-attr]
    conn.socket_connect_timeout = 0.3  # redis-py's bound on a graceful close's wait
    try:
        await conn.connect()
        sock = conn._writer.get_extra_info("socket")
        assert sock.fileno() != -1
        with paused(tls_redis):
            if nowait:
                await conn.disconnect(nowait=True)
            else:  # the goodbye is waited for, and times out
                with pytest.raises(RedisTimeoutError):
                    await conn.disconnect()
            await asyncio.sleep(0)  # the loop's next turn
            assert sock.fileno() == -1
    finally:
        await client.aclose()
