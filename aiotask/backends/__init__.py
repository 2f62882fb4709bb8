"""Result backends, chosen by URL scheme; client libraries are imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._extras import require
from aiotask._urls import BACKEND_SCHEMES, REDIS_SCHEMES, as_cluster_url, parse_url
from aiotask.backends.base import (
    EncodedResult,
    GroupProgress,
    MemberReport,
    ResultBackend,
    ResultRecord,
    decode_record,
    encode_record,
)

if TYPE_CHECKING:
    from aiotask.settings import Settings

__all__ = [
    "EncodedResult",
    "GroupProgress",
    "MemberReport",
    "ResultBackend",
    "ResultRecord",
    "decode_record",
    "encode_record",
    "from_url",
]


def from_url(url: str, settings: Settings) -> ResultBackend:
    """The result backend for a URL; raises ConfigurationError for a bad or unknown one."""
    scheme = parse_url(url, allowed=BACKEND_SCHEMES, what="result backend").scheme
    if scheme == "memory":
        from aiotask.backends.memory import MemoryBackend

        return MemoryBackend()
    if scheme in {"redis", "rediss"} and settings.celery_compat:  # Celery's result keys
        celery_redis = require("aiotask.backends.celery_redis", what="the Redis backend")
        celery_backend: ResultBackend = celery_redis.CeleryRedisBackend(url, settings)
        return celery_backend
    # redis+sentinel with celery_compat is refused by Settings (no Celery layout here)
    if scheme in REDIS_SCHEMES:
        redis_backend = require("aiotask.backends.redis", what="the Redis result backend")
        url = as_cluster_url(url, settings.redis_cluster)
        backend: ResultBackend = redis_backend.RedisBackend(url, settings)
        return backend
    if scheme in {"postgresql", "postgres"}:
        postgres = require("aiotask.backends.postgres", what="the PostgreSQL result backend")
        pg_backend: ResultBackend = postgres.PostgresBackend(url, settings)
        return pg_backend
    from aiotask.backends.sqlite import SQLiteBackend

    return SQLiteBackend(url, settings)
