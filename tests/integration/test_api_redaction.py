"""No credential reaches the worker banner, an App's repr or a BrokerConnectionError.

The connection errors are real: the URLs point at a closed port on this machine.
"""

from __future__ import annotations

import socket

import pytest

from aiotask import App
from aiotask.exceptions import BrokerConnectionError
from aiotask.worker import Worker

SECRET = "S3CR3T"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_banner_and_app_repr_hide_every_credential_form() -> None:
    port = closed_port()
    app = App(
        "t",
        broker=f"redis://user:{SECRET}@127.0.0.1:{port}/0?api_token={SECRET}",
        backend=f"redis://127.0.0.1:{port}/1?password={SECRET}&db=1",
    )
    banner = Worker(app, processes=0).banner()
    assert SECRET not in banner
    assert f"redis://user:***@127.0.0.1:{port}/0?api_token=***" in banner
    assert "?password=***&db=1" in banner
    assert SECRET not in repr(app)
    assert SECRET not in repr(app.conf)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:{s}@127.0.0.1:{p}/0",
        "redis://127.0.0.1:{p}/0?password={s}",
        "redis://127.0.0.1:{p}/0?username=u&password={s}",
    ],
)
async def test_redis_connection_error_is_redacted(url: str) -> None:
    app = App("t", broker=url.format(s=SECRET, p=closed_port()), broker_unreachable_timeout=0.2)
    with pytest.raises(BrokerConnectionError) as info:
        await app.connect()
    assert SECRET not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    await app.close()


async def test_amqp_connection_error_is_redacted() -> None:
    app = App(
        "t",
        broker=f"amqp://guest:{SECRET}@127.0.0.1:{closed_port()}//",
        backend=None,
        broker_unreachable_timeout=0.2,
    )
    with pytest.raises(BrokerConnectionError) as info:
        await app.connect()
    assert SECRET not in str(info.value)
    await app.close()
