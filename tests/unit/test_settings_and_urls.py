from __future__ import annotations

from dataclasses import fields

import orjson
import pytest

from aiotask._time import parse_rate
from aiotask._urls import BROKER_SCHEMES, parse_url, redact
from aiotask.exceptions import ConfigurationError
from aiotask.settings import DEFAULT_BROKER_URL, ENV_PARSERS, Settings


def test_defaults_use_the_embedded_sqlite_file() -> None:
    s = Settings.from_env({})
    assert s.broker_url == DEFAULT_BROKER_URL
    assert s.backend_url == DEFAULT_BROKER_URL
    assert s.effective_prefetch == s.concurrency


def test_env_then_overrides() -> None:
    env = {
        "AIOTASK_BROKER_URL": "redis://h:6379/0",
        "AIOTASK_CONCURRENCY": "7",
        "AIOTASK_TASK_TRACK_STARTED": "yes",
        "AIOTASK_TASK_ROUTES": '{"a.*": "q"}',
        "AIOTASK_RESULT_BACKEND": "none",
    }
    s = Settings.from_env(env, concurrency=9)
    assert s.broker_url == "redis://h:6379/0"
    assert s.concurrency == 9
    assert s.task_track_started is True
    assert s.task_routes == {"a.*": "q"}
    assert s.backend_url is None


def test_backend_follows_broker() -> None:
    assert Settings(broker_url="redis://h/0").backend_url == "redis://h/0"
    assert Settings(broker_url="amqp://h//").backend_url is None
    assert Settings(broker_url="memory://").backend_url == "memory://"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"AIOTASK_CONCURRENCY": "many"}, "AIOTASK_CONCURRENCY"),
        ({"AIOTASK_TASK_TRACK_STARTED": "maybe"}, "AIOTASK_TASK_TRACK_STARTED"),
        ({"AIOTASK_BROKER_URL": "kafka://x"}, "unsupported broker URL scheme"),
        ({"AIOTASK_CONCURRENCY": "0"}, "concurrency must be positive"),
    ],
)
def test_bad_values_say_what_is_wrong(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Settings.from_env(env)


def test_unknown_setting() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Settings.from_env({}, concurency=3)


def test_redact_hides_passwords_everywhere() -> None:
    text = "broker redis://user:s3cret@h:6379/0 and amqp://guest:guest@h:5672//"
    out = redact(text)
    assert "s3cret" not in out
    assert ":guest@" not in out
    assert "redis://user:***@h:6379/0" in out
    assert redact("redis://h:6379") == "redis://h:6379"


#: Every form in which redis-py (`from_url` passes any query key to the connection) and
#: aio-pika (userinfo only) take a credential, with the secret always "S3CR3T".
CREDENTIAL_FORMS = [
    ("redis://user:S3CR3T@h:6379/0", "redis://user:***@h:6379/0"),
    ("redis://:S3CR3T@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://default:S3CR3T@h:6380/1?ssl_cert_reqs=none", "rediss://default:***@h:6380/1"),
    ("unix://:S3CR3T@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
    ("redis://h:6379/0?password=S3CR3T", "redis://h:6379/0?password=***"),
    ("redis://h/0?username=bob&password=S3CR3T&db=1", "?username=bob&password=***&db=1"),
    ("rediss://h/0?ssl_password=S3CR3T", "rediss://h/0?ssl_password=***"),
    ("rediss://h/0?ssl_keyfile_password=S3CR3T", "?ssl_keyfile_password=***"),
    ("redis://h/0?sentinel_password=S3CR3T", "?sentinel_password=***"),
    ("redis://h/0?Password=S3CR3T", "?Password=***"),
    ("redis://h/0?pass%77ord=S3CR3T", "?pass%77ord=***"),
    ("redis://h/0?token=S3CR3T;db=1", "?token=***;db=1"),
    ("redis://h/0?access_token=S3CR3T#frag", "?access_token=***"),
    ("amqp://guest:S3CR3T@h:5672/vhost?heartbeat=30", "amqp://guest:***@h:5672/vhost?heartbeat=30"),
    ("amqps://u:S3CR3T@h:5671/?cafile=/ca.pem&keyfile=/k.pem", "?cafile=***&keyfile=***"),
    (
        "rediss://:S3CR3T@h/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&db=1",
        "rediss://:***@h/0?ssl_ca_certs=***&ssl_certfile=***&ssl_keyfile=***&db=1",
    ),
    ("amqp://u:S3CR3T@h/%2F?auth=plain&password=S3CR3T", "amqp://u:***@h/%2F?auth=plain"),
    # percent-encoded and raw special characters in the password
    ("redis://u:S3CR3T%40%2F@h/0", "redis://u:***@h/0"),
    ("redis://u:p@S3CR3T@h/0", "redis://u:***@h/0"),
    ("redis://:S3CR3T/x==@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://u:S3CR3T?x@h/0", "redis://u:***@h/0"),
    ("redis://u:S3CR3T#x@h/0", "redis://u:***@h/0"),
    ("amqp://u:S3CR'3T@h//", "amqp://u:***@h//"),
]


@pytest.mark.parametrize(("url", "expected"), CREDENTIAL_FORMS)
def test_redact_every_credential_form(url: str, expected: str) -> None:
    for text in (url, f"cannot reach {url}: refused", f"url={url!r}", f'"{url}"'):
        out = redact(text)
        assert "S3CR3T" not in out
        assert "3T" not in out
        assert expected in out


@pytest.mark.parametrize(
    "text",
    [
        "redis://h:6379/0",
        "redis://bob@h:6379/0",
        "redis://h:6379/0?db=1&socket_timeout=5&client_name=me@host",
        "sqlite:///var/data/a@b.db",
        "amqp://h/vhost?heartbeat=0&name=worker",
        "memory://",
        "no url here: password=plain text is not a URL",
    ],
)
def test_redact_keeps_what_is_not_a_secret(text: str) -> None:
    assert redact(text) == text


def test_redact_handles_several_urls_in_one_text() -> None:
    out = redact("redis://:S3CR3T@a:1/0;redis://:S3CR3T@b:2/0,amqp://u:S3CR3T@c//")
    assert out == "redis://:***@a:1/0;redis://:***@b:2/0,amqp://u:***@c//"


def test_settings_repr_is_redacted() -> None:
    s = Settings(broker_url="redis://:S3CR3T@h/0", result_backend="redis://h/1?password=S3CR3T")
    assert "S3CR3T" not in repr(s)
    assert "redis://:***@h/0" in repr(s)


def test_bad_url_error_never_leaks_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("kafka://u:topsecret@h", allowed=BROKER_SCHEMES, what="broker")
    assert "topsecret" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        parse_url("redis://u:topsecret@h:notaport", allowed=BROKER_SCHEMES, what="broker")
    assert "topsecret" not in str(info.value)
    # a raw '/' in the password makes urlsplit read it as a port: its error quotes the "port"
    with pytest.raises(ConfigurationError) as info:
        parse_url("redis://:topsecret/x@h:6379/0", allowed=BROKER_SCHEMES, what="broker")
    assert "topsecret" not in str(info.value)
    assert "percent-encode" in str(info.value)


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [("10/s", 10.0), ("120/m", 2.0), ("3600/h", 1.0), ("5/10s", 0.5), (4, 4.0), (None, None)],
)
def test_parse_rate(rate: str | int | None, per_second: float | None) -> None:
    assert parse_rate(rate) == per_second


@pytest.mark.parametrize("rate", ["fast", "10/d", "0/s", -1])
def test_bad_rate(rate: str | int) -> None:
    with pytest.raises(ConfigurationError):
        parse_rate(rate)


def test_every_setting_has_an_environment_parser() -> None:
    """Fails when a field is added to Settings without an entry in ENV_PARSERS."""
    assert {f.name for f in fields(Settings)} == set(ENV_PARSERS)


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_each_setting_parses_from_the_environment(name: str) -> None:
    """Every field read back from its environment form equals the value it was written from."""
    default = getattr(Settings(), name)
    samples: dict[str, object] = {
        "task_routes": {"proj.*": "q"},
        "result_backend": "memory://",
        "broker_url": "memory://",
        "task_track_started": True,
    }
    value = samples.get(name, default)
    raw = orjson.dumps(value).decode() if isinstance(value, dict) else str(value).lower()
    if isinstance(value, str):
        raw = value
    parsed = Settings.from_env({"AIOTASK_" + name.upper(): raw})
    assert getattr(parsed, name) == value
    assert type(getattr(parsed, name)) is type(value)


def test_env_error_names_the_expected_form_and_redacts() -> None:
    with pytest.raises(ConfigurationError, match="number of seconds"):
        Settings.from_env({"AIOTASK_RESULT_EXPIRES": "a day"})
    with pytest.raises(ConfigurationError, match="JSON object of strings"):
        Settings.from_env({"AIOTASK_TASK_ROUTES": '{"a": 1}'})
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"AIOTASK_CONCURRENCY": "redis://:S3CR3T@h"})
    assert "S3CR3T" not in str(info.value)
