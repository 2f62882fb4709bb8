from __future__ import annotations

import pytest

from aiotask._time import parse_rate
from aiotask._urls import BROKER_SCHEMES, parse_url, redact
from aiotask.exceptions import ConfigurationError
from aiotask.settings import DEFAULT_BROKER_URL, Settings


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


def test_bad_url_error_never_leaks_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("kafka://u:topsecret@h", allowed=BROKER_SCHEMES, what="broker")
    assert "topsecret" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        parse_url("redis://u:topsecret@h:notaport", allowed=BROKER_SCHEMES, what="broker")
    assert "topsecret" not in str(info.value)


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
