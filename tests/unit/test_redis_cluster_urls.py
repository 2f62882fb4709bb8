"""redis+cluster:// URLs: parsing, the `redis_cluster` setting, and redaction of passwords."""

from __future__ import annotations

import pytest

from aiotask._redis.cluster import make_cluster_client, startup_nodes
from aiotask._urls import BROKER_SCHEMES, as_cluster_url, parse_url, redact
from aiotask.exceptions import ConfigurationError
from aiotask.settings import Settings

URL = "redis+cluster://app:s3cr%40t@10.0.0.1:7000,10.0.0.2:7001,node3/0"


def test_startup_nodes_and_first_node_stand_for_the_url() -> None:
    assert startup_nodes(URL) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node3", 6379)]
    parsed = parse_url(URL, allowed=BROKER_SCHEMES, what="broker")
    assert (parsed.scheme, parsed.host, parsed.port) == ("redis+cluster", "10.0.0.1", 7000)


def test_password_is_redacted_in_cluster_urls() -> None:
    text = f"cannot reach {URL} and rediss+cluster://u:pw@h:1,h2:2/0?ssl_keyfile=/k.pem"
    out = redact(text)
    assert "s3cr" not in out and ":pw@" not in out and "/k.pem" not in out
    assert "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7001,node3/0" in out
    assert "rediss+cluster://u:***@h:1,h2:2/0?ssl_keyfile=***" in out
    assert "s3cr" not in repr(Settings(broker_url=URL))


def test_setting_turns_redis_urls_into_cluster_urls() -> None:
    assert as_cluster_url("redis://h:1/0", True) == "redis+cluster://h:1/0"
    assert as_cluster_url("rediss://h:1/0", True) == "rediss+cluster://h:1/0"
    assert as_cluster_url("redis://h:1/0", False) == "redis://h:1/0"
    assert as_cluster_url("amqp://h/", True) == "amqp://h/"
    assert Settings.from_env({"AIOTASK_REDIS_CLUSTER": "yes"}).redis_cluster is True
    assert Settings(broker_url=URL).backend_url == URL  # results on the same cluster


def test_cluster_has_database_zero_only() -> None:
    with pytest.raises(ConfigurationError, match="database 0 only"):
        make_cluster_client("redis+cluster://h:1/3", None, None)


def test_wait_replicas_is_refused_on_a_cluster_with_a_clear_error() -> None:
    """WAIT has no key: a cluster cannot send it to the primaries a batch wrote to."""
    from aiotask.brokers import from_url

    waiting = Settings(broker_url=URL, redis_wait_replicas=1)
    with pytest.raises(ConfigurationError, match="redis_wait_replicas is not supported"):
        from_url(URL, waiting, "app")
    plain = Settings(broker_url="redis://h:1/0", redis_wait_replicas=1, redis_cluster=True)
    with pytest.raises(ConfigurationError, match="redis_wait_replicas is not supported"):
        from_url("redis://h:1/0", plain, "app")  # the redis_cluster setting: a cluster too
    single = Settings(broker_url="redis://h:1/0", redis_wait_replicas=1)
    assert from_url("redis://h:1/0", single, "app") is not None  # one primary: WAIT applies
    assert from_url(URL, Settings(broker_url=URL), "app") is not None
