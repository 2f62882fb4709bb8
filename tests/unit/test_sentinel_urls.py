"""redis+sentinel:// URLs: parsed into sentinels, service, db and credentials; never leaked."""

from __future__ import annotations

import pytest

from aiotask import App
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
