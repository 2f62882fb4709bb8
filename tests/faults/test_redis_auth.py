"""Error messages tell a refused password, a server error and an unreachable server apart.

Only a connection failure suggests the server may be down (and is retried); a wrong or
missing password is reported at once as a credentials problem, without the password.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from aiotask.backends.redis import RedisBackend
from aiotask.brokers.redis_streams import RedisStreamsBroker
from aiotask.exceptions import BrokerConnectionError
from aiotask.settings import Settings
from tests.conftest import REQUIRE_SERVICES
from tests.servers import PrivateRedis

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.redis

PASSWORD = "s3cret-Pw-42"


class PasswordRedis(PrivateRedis):
    """PrivateRedis started with --requirepass: ready when PING asks for the password."""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.args, "--requirepass", PASSWORD], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"-NOAUTH"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    server = PasswordRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _url(server: PrivateRedis, password: str | None) -> str:
    auth = f":{password}@" if password is not None else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("password", ["wrong-Pw-99", None], ids=["wrong", "missing"])
@pytest.mark.parametrize("kind", ["broker", "backend"])
async def test_bad_credentials_are_named_as_such_at_once(
    server: PrivateRedis, kind: str, password: str | None
) -> None:
    url = _url(server, password)
    conf = Settings(broker_url=url, broker_unreachable_timeout=30.0)
    client = RedisStreamsBroker(url, conf, "app") if kind == "broker" else RedisBackend(url, conf)
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        await client.connect()
    assert time.monotonic() - started < 5.0  # no retrying for broker_unreachable_timeout
    message = str(caught.value)
    assert "refused the credentials" in message and "password" in message
    assert "server running" not in message
    assert "wrong-Pw-99" not in message and PASSWORD not in message


async def test_right_password_works_and_a_stopped_server_is_called_unreachable(
    server: PrivateRedis,
) -> None:
    url = _url(server, PASSWORD)
    conf = Settings(broker_url=url, broker_unreachable_timeout=0.5)
    broker = RedisStreamsBroker(url, conf, "app")
    await broker.connect()
    await broker.close()
    server.kill()
    with pytest.raises(BrokerConnectionError) as caught:
        await broker.connect()
    message = str(caught.value)
    assert "is the server running" in message and PASSWORD not in message
