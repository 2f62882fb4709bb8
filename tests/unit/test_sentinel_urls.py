"""redis+sentinel:// URLs: parsed into sentinels, service, db and credentials; never leaked.
And the Sentinel client built from one keeps every sentinel when asked concurrently."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiotask import App
from aiotask._redis.client import _sentinel_client
from aiotask._urls import parse_sentinel, redact
from aiotask.exceptions import ConfigurationError
from aiotask.settings import Settings

URL = "redis+sentinel://u:s3cret@h1:26379,h2:26380,h3/2?service=mymaster&sentinel_password=pw9"


def test_the_url_names_sentinels_service_db_and_credentials() -> None:
    parsed = parse_sentinel(URL)
    assert parsed.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (parsed.service, parsed.db) == ("mymaster", 2)
    assert (parsed.username, parsed.password) == ("u", "s3cret")
    assert dict(parsed.query) == {"sentinel_password": "pw9"}


def test_passwords_are_redacted_in_text_and_in_settings() -> None:
    shown = redact(f"cannot reach {URL} now")
    assert "s3cret" not in shown and "pw9" not in shown
    assert "h1:26379,h2:26380,h3/2" in shown  # where it went stays readable
    conf = Settings(broker_url=URL)
    assert conf.backend_url == URL  # results on the same primary, as with redis://
    assert "s3cret" not in repr(conf) and "pw9" not in repr(conf)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:1,h2:2/0", "?service=NAME"),
        ("redis+sentinel://h1:x/0?service=m", "host:port"),
        ("redis+sentinel://h1:1/zero?service=m", "db number"),
        ("rediss+sentinel://h1:1/0", "?service=NAME"),
        ("redis+sentinel://h1:1/0?service=m&ssl_ca_certs=/x", "use rediss\\+sentinel://"),
    ],
)
def test_bad_urls_say_what_to_fix(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("?", r"\?")):
        App("x", broker=url)


def test_tls_options_need_a_tls_url() -> None:
    with pytest.raises(ConfigurationError, match="need a TLS URL"):
        Settings(broker_url="redis+sentinel://h1:1/0?service=m", broker_tls={"ca_certs": "x"})


class _FakeSentinel:
    """Answers SENTINEL MASTERS after one event-loop turn; `knows` says whether it names a
    usable primary (during a failover some sentinels still report the old, down one)."""

    def __init__(self, knows: bool) -> None:
        self.knows = knows

    async def sentinel_masters(self) -> dict[str, dict[str, Any]]:
        await asyncio.sleep(0)
        if not self.knows:
            return {}
        state = {"is_master": True, "is_sdown": False, "is_odown": False}
        return {"m": {**state, "num-other-sentinels": 2, "ip": "10.0.0.9", "port": 6390}}


async def test_concurrent_discoveries_keep_every_sentinel() -> None:
    """Connections that ask the sentinels at the same moment (every pooled connection after a
    failover) must not drop a sentinel from the list: a dropped one is never asked again and
    never closed (redis-py 8.1's index swap lost it; its connection leaked)."""
    client, sentinel = _sentinel_client("redis+sentinel://h1:1,h2:2,h3:3/0?service=m", None)
    fakes: list[Any] = [_FakeSentinel(knows=False), _FakeSentinel(knows=True), _FakeSentinel(True)]
    sentinel.sentinels = list(fakes)  # stand-ins for the Redis clients of the sentinels
    found = await asyncio.gather(*(sentinel.discover_master("m") for _ in range(3)))
    assert found == [("10.0.0.9", 6390)] * 3
    assert sorted(map(id, sentinel.sentinels)) == sorted(map(id, fakes))
    assert sentinel.sentinels[0] is fakes[1]  # the one that answered is asked first
    await client.aclose()
