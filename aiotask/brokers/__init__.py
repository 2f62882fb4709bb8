"""Broker implementations, chosen by URL scheme; client libraries are imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._extras import require
from aiotask._urls import BROKER_SCHEMES, REDIS_SCHEMES, as_cluster_url, parse_url
from aiotask.brokers.base import (
    Broker,
    BrokerCapabilities,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
)

if TYPE_CHECKING:
    from aiotask.settings import Settings

__all__ = [
    "Broker",
    "BrokerCapabilities",
    "DeadLetter",
    "Delivery",
    "Outgoing",
    "QueueStats",
    "from_url",
]


def from_url(url: str, settings: Settings, app_name: str) -> Broker:
    """The broker for a URL; raises ConfigurationError for a bad or unknown one."""
    scheme = parse_url(url, allowed=BROKER_SCHEMES, what="broker").scheme
    if scheme == "memory":
        from aiotask.brokers.memory import MemoryBroker

        return MemoryBroker(settings)
    if scheme in {"redis", "rediss"} and settings.celery_compat:  # kombu's Redis transport
        kombu_redis = require("aiotask.brokers.kombu_redis", what="the Redis broker")
        kombu_broker: Broker = kombu_redis.KombuRedisBroker(url, settings, app_name)
        return kombu_broker
    # redis+sentinel with celery_compat is refused by Settings (no kombu layout here)
    if scheme in REDIS_SCHEMES:
        redis_streams = require("aiotask.brokers.redis_streams", what="the Redis broker")
        url = as_cluster_url(url, settings.redis_cluster)
        broker: Broker = redis_streams.RedisStreamsBroker(url, settings, app_name)
        return broker
    if scheme == "sqlite":
        from aiotask.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, settings)
    if scheme in {"postgresql", "postgres"}:  # refused by Settings with celery_compat
        postgres = require("aiotask.brokers.postgres", what="the PostgreSQL broker")
        pg_broker: Broker = postgres.PostgresBroker(url, settings)
        return pg_broker
    if settings.celery_compat:  # Celery's queues, exchanges and message properties
        kombu_amqp = require("aiotask.brokers.kombu_amqp", what="the RabbitMQ broker")
        celery_broker: Broker = kombu_amqp.KombuAMQPBroker(url, settings, app_name)
        return celery_broker
    rabbitmq = require("aiotask.brokers.rabbitmq", what="the RabbitMQ broker")
    amqp_broker: Broker = rabbitmq.RabbitMQBroker(url, settings, app_name)
    return amqp_broker
