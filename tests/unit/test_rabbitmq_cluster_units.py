"""RabbitMQ cluster pieces without a server: node lists, queue types, arguments, refusals."""

from __future__ import annotations

import pytest
from aio_pika import RobustConnection

from aiotask._urls import BROKER_SCHEMES, parse_url, redact
from aiotask.brokers import _rabbitmq_queues as queues
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers._rabbitmq_nodes import HOOK, NodesConnection, node_urls
from aiotask.exceptions import ConfigurationError
from aiotask.settings import Settings

URL = "amqp://app:s3cr%40t@h1:5672,h2:5673,h3/vhost?heartbeat=10"


def test_a_host_list_shares_userinfo_vhost_and_query() -> None:
    assert node_urls(URL) == [
        "amqp://app:s3cr%40t@h1:5672/vhost?heartbeat=10",
        "amqp://app:s3cr%40t@h2:5673/vhost?heartbeat=10",
        "amqp://app:s3cr%40t@h3/vhost?heartbeat=10",
    ]
    assert node_urls("amqp://h1,h2") == ["amqp://h1", "amqp://h2"]


def test_full_urls_joined_by_semicolons() -> None:
    joined = "amqp://a:pw@h1:1/v;amqp://b:pw2@h2:2/w?x=1;y=2"
    assert node_urls(joined) == ["amqp://a:pw@h1:1/v", "amqp://b:pw2@h2:2/w?x=1;y=2"]


def test_an_empty_host_is_refused_without_the_password() -> None:
    with pytest.raises(ConfigurationError, match="empty host") as info:
        node_urls("amqp://u:topsecret@h1,,h2/")
    assert "topsecret" not in str(info.value)


def test_parse_and_settings_accept_a_node_list_and_never_show_its_password() -> None:
    parsed = parse_url(URL, allowed=BROKER_SCHEMES, what="broker")
    assert (parsed.scheme, parsed.host, parsed.port) == ("amqp", "h1", 5672)
    conf = Settings(broker_url=URL)
    assert "s3cr" not in repr(conf)
    shown = redact(f"lost {URL} and amqp://b:pw2@h2:2/w;amqp://c:pw3@h3:3/w")
    assert "s3cr" not in shown and "pw2" not in shown and "pw3" not in shown
    assert "amqp://app:***@h1:5672,h2:5673,h3/vhost" in shown


def test_the_reconnect_hook_still_exists_in_aio_pika() -> None:
    # NodesConnection moves to the next node inside aio-pika's private one-attempt method.
    assert callable(getattr(RobustConnection, HOOK))
    bound = NodesConnection.over(["amqp://h1/", "amqp://h2/"], 1)
    assert bound.nodes == ("amqp://h1/", "amqp://h2/") and bound.start == 1
    assert getattr(bound, HOOK) is NodesConnection._attempt


def test_queue_types_from_settings_url_and_per_queue() -> None:
    conf = Settings(rabbitmq_queue_types={"orders": "quorum"}, max_deliveries=4)
    types = queues.queue_types(conf, "amqp://h/")
    assert (types.of("orders"), types.of("other")) == ("quorum", "classic")
    assert types.any_quorum
    url_wins = queues.queue_types(conf, "amqp://h/?queue_type=quorum")
    assert url_wins.of("other") == "quorum"
    assert queues.queue_types(conf.replace(rabbitmq_queue_type="quorum"), "amqp://h/").default == (
        "quorum"
    )
    env = Settings.from_env(
        {
            "AIOTASK_RABBITMQ_QUEUE_TYPE": "quorum",
            "AIOTASK_RABBITMQ_QUEUE_TYPES": "bulk:classic, orders:QUORUM",
        }
    )
    assert env.rabbitmq_queue_type == "quorum"
    assert dict(env.rabbitmq_queue_types) == {"bulk": "classic", "orders": "quorum"}


@pytest.mark.parametrize(
    "kwargs", [{"rabbitmq_queue_type": "stream"}, {"rabbitmq_queue_types": {"q": "lazy"}}]
)
def test_unknown_queue_types_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="rabbitmq_queue_type"):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_quorum_arguments_carry_the_delivery_limit() -> None:
    names = topo.Names("p")
    types = queues.QueueTypes("classic", {"q": "quorum"}, max_deliveries=5)
    args = queues.work_arguments(names, "q", types)
    assert args["x-queue-type"] == "quorum" and "x-max-priority" not in args
    assert args["x-delivery-limit"] == 4  # RabbitMQ delivers limit + 1 = 5 times
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-dead-letter-routing-key"] == "p.q.dead"
    assert queues.dead_arguments("q", types) == {"x-queue-type": "quorum"}
    classic = queues.work_arguments(names, "other", types)
    assert classic["x-max-priority"] == 9 and "x-delivery-limit" not in classic
    assert queues.dead_arguments("other", types) == {}
    assert queues.delivery_limit(1) == 0


def test_mismatch_messages_are_parsed() -> None:
    found = queues._INEQUIVALENT.search(
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'p.q' in vhost "
        "'/': received '3' but current is '2'"
    )
    assert found is not None and (found["arg"], found["value"]) == ("x-delivery-limit", "2")
    found = queues._INEQUIVALENT.search(
        "inequivalent arg 'x-delivery-limit' for queue 'p.q' in vhost '/': received the value "
        "'4' of type 'signedint' but current is none"
    )
    assert found is not None and found["none"] == "none"
    assert queues._value("7", None) == 7 and queues._value(None, "none") is None


def test_a_type_mismatch_names_the_queue_and_the_setting() -> None:
    types = queues.QueueTypes("classic", {"orders": "quorum"}, 5)
    text = queues.refusal("p.orders", "orders", types, "inequivalent arg 'x-max-priority'")
    assert "'p.orders'" in text and "rabbitmq_queue_types['orders']" in text
    assert "quorum" in text and "delete" in text
    other = queues.refusal("p.x", "x", types, "...", "x-max-priority")
    assert "rabbitmq_queue_type" in other
    foreign = queues.refusal("p.x", "x", types, "...", "x-dead-letter-routing-key")
    assert "x-dead-letter-routing-key" in foreign and "key_prefix" in foreign


def test_server_delivery_limit_dead_letters_get_the_common_reason() -> None:
    reason = topo.dead_reason({"x-first-death-reason": "delivery_limit"})
    assert "max_deliveries" in reason and "without being settled" in reason
