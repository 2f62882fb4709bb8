"""Redis Sentinel over TLS (rediss+sentinel://) against a private TLS-only Sentinel set: the
sentinels and the Redis servers have no plain port and require client certificates, so every
connection the broker and the result backend make (to ask the sentinels, and to the primary
they name) is TLS with the URL's options."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from aiotask import App
from aiotask.exceptions import BrokerConnectionError, ConfigurationError
from aiotask.settings import Settings
from aiotask.testing import start_worker
from tests.tls_support import PKI, TLSSentinelSet

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="module")
def sentinels(tls_dir: Path, pki: PKI) -> Iterator[TLSSentinelSet]:
    found = TLSSentinelSet(tls_dir / "set", pki)
    found.start()
    try:
        yield found
    finally:
        found.stop()


async def test_broker_and_backend_through_tls_sentinels(sentinels: TLSSentinelSet) -> None:
    url = sentinels.url
    app = App("tlss", broker=url, backend=url, key_prefix="tlss")

    @app.task(name="tlss.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, start_worker(app):
        assert await (await add.send(2, 3)).get(timeout=15) == 5
        results = [await add.send(i, i) for i in range(20)]
        assert [await r.get(timeout=15) for r in results] == [2 * i for i in range(20)]


async def test_a_wrong_ca_is_refused(sentinels: TLSSentinelSet, pki: PKI) -> None:
    url = sentinels.url_with(ca=pki.other_ca)
    app = App("tlss", broker=url, backend=None, key_prefix="tlss-bad")
    with pytest.raises(BrokerConnectionError, match="no sentinel could be asked over TLS") as err:
        async with app:
            await app.broker.purge("default")
    assert str(pki.other_ca) not in str(err.value)  # file locations stay masked


def test_tls_options_need_the_tls_scheme(pki: PKI) -> None:
    plain = "redis+sentinel://127.0.0.1:26379/0?service=x"
    with pytest.raises(ConfigurationError, match="use rediss\\+sentinel:// instead"):
        Settings(broker_url=plain, broker_tls={"ca_certs": str(pki.ca)})
    conf = Settings(broker_url="rediss+sentinel://127.0.0.1:26379/0?service=x")
    assert conf.backend_url == conf.broker_url


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_failover_over_tls(tmp_path: Path, pki: PKI) -> None:
    """kill -9 of the primary of a TLS-only set: the sentinels (asked over TLS) promote the
    replica, and the producer, the worker and the result backend carry on with it."""
    servers = TLSSentinelSet(tmp_path / "set", pki)
    servers.start()
    try:
        app = App("tlsf", broker=servers.url, backend=servers.url, key_prefix="tlsf")

        @app.task(name="tlsf.add")
        async def add(x: int, y: int) -> int:
            return x + y

        async with app, start_worker(app):
            assert await (await add.send(1, 1)).get(timeout=15) == 2
            old = servers.kill_primary()
            new = await asyncio.to_thread(servers.wait_failover, old)
            assert new != old
            # sent through the failover: the publish retries until the sentinels name `new`
            results = [await add.send(i, i) for i in range(5)]
            assert [await r.get(timeout=60) for r in results] == [2 * i for i in range(5)]
    finally:
        servers.stop()
