"""Redis Sentinel over TLS (rediss+sentinel://) against a private TLS-only Sentinel set: the
sentinels and the Redis servers have no plain port and require client certificates, so every
connection the broker and the result backend make (to ask the sentinels, and to the primary
they name) is TLS with the URL's options."""

from __future__ import annotations

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
