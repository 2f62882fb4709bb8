"""Settings: one frozen, typed object, from keyword arguments and AIOTASK_* environment variables.

Precedence, lowest first: defaults, then `AIOTASK_*` environment variables, then keyword
arguments to `App(...)`. Per-task options and per-call options override these at their level.
This is the only module that reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import orjson

from aiotask import _tls
from aiotask._urls import BACKEND_SCHEMES, BROKER_SCHEMES, parse_url, redact
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ENV_PREFIX = "AIOTASK_"
DEFAULT_BROKER_URL = "sqlite:///aiotask.db"
#: `result_backend` value meaning "derive from the broker URL".
FROM_BROKER = "from-broker"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about an App and its workers, validated on creation."""

    broker_url: str = DEFAULT_BROKER_URL
    #: A backend URL, None for no results, or FROM_BROKER: the broker's server/file for
    #: Redis and SQLite brokers, memory:// for memory://, none for AMQP.
    result_backend: str | None = FROM_BROKER
    result_expires: float = 86400.0
    default_queue: str = "default"
    #: task name (or a `prefix.*` pattern) -> queue name.
    task_routes: Mapping[str, str] = field(default_factory=dict)
    #: Periodic entries, Celery-style: name -> {"task": ..., "cron"/"every": ..., ...}
    #: (see docs/periodic.md); validated when the App is created.
    beat_schedule: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_priority: int = 0
    #: Prefix of every key/queue/table aiotask creates, so apps can share a server.
    key_prefix: str = "aiotask"
    #: Concurrent coroutine tasks per worker.
    concurrency: int = 100
    #: Child processes for plain-function tasks; 0 means the number of CPUs.
    processes: int = 0
    #: Messages a worker holds unacknowledged (running + waiting); 0 means `concurrency`.
    prefetch: int = 0
    #: Seconds a delivered message stays owned by its worker without a renewal.
    visibility_timeout: float = 30.0
    #: Deliveries after which a message that keeps failing to settle is dead-lettered.
    max_deliveries: int = 5
    #: Seconds between a worker's heartbeats (liveness for fast takeover of a dead worker's work).
    worker_heartbeat_interval: float = 2.0
    #: Seconds without a heartbeat after which a worker counts as lost and its messages are
    #: taken over at once (a live worker's long task is never taken).
    worker_lost_after: float = 10.0
    #: Largest encoded message `send` accepts, in bytes (MessageTooLarge past it; 0: no cap).
    max_message_size: int = 10 * 1024 * 1024
    #: Seconds a warm shutdown waits for running tasks.
    shutdown_grace: float = 30.0
    #: Seconds a worker keeps trying to reach its broker before it exits non-zero.
    broker_unreachable_timeout: float = 60.0
    #: A worker whose broker is unreachable at start retries with backoff (instead of exiting
    #: at once, which drives supervisord to FATAL) ...
    broker_connection_retry_on_startup: bool = True
    #: ... for up to this many seconds, then exits 1 (the process supervisor restarts it).
    broker_connection_startup_timeout: float = 300.0
    #: TLS of a rediss:// or amqps:// broker (docs/tls.md): {"ca_certs": path, "certfile": path,
    #: "keyfile": path, "cert_reqs": "required", "check_hostname": True}; the URL query's
    #: ssl_* keys win over these, key by key.
    broker_tls: Mapping[str, str | bool | int] = field(default_factory=dict)
    #: The same for a rediss:// result backend; when empty, a rediss:// backend uses broker_tls.
    backend_tls: Mapping[str, str | bool | int] = field(default_factory=dict)
    #: Store STARTED when a task starts (one more write per task).
    task_track_started: bool = False
    #: Emit monitoring events (docs/monitoring.md): task-sent from producers, task and worker
    #: events from workers (`aiotask worker -E` turns them on for one worker).
    events: bool = False
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0
    log_level: str = "INFO"
    #: Seconds a unique or debounce lock lives at most when the task sets no `unique_for`: the
    #: safety net behind the explicit releases (docs/task-options.md, "Unique tasks").
    unique_for: float = 3600.0
    #: Seconds a concurrency slot (concurrency_limit) stays held without a renewal by its
    #: worker; renewed every third of it, so a killed worker's slots free after at most this.
    concurrency_slot_lease: float = 30.0
    #: Speak Celery's wire formats (protocol v2 messages, kombu layouts, Celery result keys);
    #: see docs/migrating-from-celery.md. The default queue becomes `celery` unless set.
    celery_compat: bool = False

    def __post_init__(self) -> None:
        parse_url(self.broker_url, allowed=BROKER_SCHEMES, what="broker")
        if self.result_backend not in (None, FROM_BROKER):
            parse_url(str(self.result_backend), allowed=BACKEND_SCHEMES, what="result backend")
        _tls.for_broker(self)  # TLS options: valid, and only with a TLS scheme
        if self.backend_url is not None:
            _tls.for_backend(self, self.backend_url)
        elif self.backend_tls:
            raise ConfigurationError("backend_tls is set but there is no result backend")
        _positive(self, "result_expires", "visibility_timeout", "shutdown_grace")
        _positive(self, "concurrency", "max_deliveries", "broker_unreachable_timeout")
        _positive(self, "broker_connection_startup_timeout", "unique_for")
        _positive(self, "worker_heartbeat_interval", "worker_lost_after")
        _positive(self, "concurrency_slot_lease")
        _non_negative(self, "max_message_size")
        if self.worker_lost_after <= self.worker_heartbeat_interval:
            raise ConfigurationError(
                "worker_lost_after must be longer than worker_heartbeat_interval "
                f"({self.worker_lost_after!r} <= {self.worker_heartbeat_interval!r})"
            )
        _non_negative(self, "processes", "prefetch", "max_tasks_per_child", "max_memory_per_child")
        if not 0 <= self.default_priority <= 9:
            raise ConfigurationError("default_priority must be between 0 and 9")
        if not self.default_queue or not self.key_prefix:
            raise ConfigurationError("default_queue and key_prefix must not be empty")

    @property
    def effective_prefetch(self) -> int:
        """Unacknowledged messages a worker may hold."""
        return self.prefetch or self.concurrency

    @property
    def backend_url(self) -> str | None:
        """The result backend URL after applying the FROM_BROKER rule."""
        if self.result_backend != FROM_BROKER:
            return self.result_backend
        scheme = self.broker_url.split("://", 1)[0].lower()
        if scheme in {"redis", "rediss", "sqlite", "memory"}:
            return self.broker_url
        return None

    def __repr__(self) -> str:
        """Every field, with URL credentials masked (the repr ends up in logs and tracebacks)."""
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return redact(f"Settings({shown})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, overlaid with AIOTASK_<FIELD> variables, overlaid with `overrides`."""
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(sorted(unknown))}: known settings are "
                f"{', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name in known:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = parse_env(name, raw)
        values.update(overrides)
        if values.get("celery_compat") and "default_queue" not in values:
            values["default_queue"] = "celery"  # Celery's default queue, so producers meet
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)


# --- environment parsing: one explicit parser per field -----------------------------------


def _str(raw: str) -> str:
    return raw


def _optional_url(raw: str) -> str | None:
    return None if raw.strip().lower() in {"", "none", "null"} else raw


def _int(raw: str) -> int:
    return int(raw)


def _float(raw: str) -> float:
    return float(raw)


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
        raise ValueError(raw)
    return lowered in {"1", "true", "yes", "on"}


def _str_mapping(raw: str) -> dict[str, str]:
    value = orjson.loads(raw)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(raw)
    return value


def _tls_mapping(raw: str) -> dict[str, str | bool | int]:
    value = orjson.loads(raw)
    if not isinstance(value, dict) or not all(
        isinstance(v, str | bool | int) for v in value.values()
    ):
        raise ValueError(raw)
    return value


def _object_mapping(raw: str) -> dict[str, dict[str, Any]]:
    value = orjson.loads(raw)
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(raw)
    return value


#: AIOTASK_<FIELD> parsers, with what the error message calls the expected form. Every
#: field of Settings has one (a unit test fails when a new field is missing here).
ENV_PARSERS: dict[str, tuple[Callable[[str], object], str]] = {
    "broker_url": (_str, "URL"),
    "result_backend": (_optional_url, "URL or 'none'"),
    "result_expires": (_float, "number of seconds"),
    "default_queue": (_str, "queue name"),
    "task_routes": (_str_mapping, 'JSON object of strings, e.g. {"proj.*": "q"}'),
    "beat_schedule": (
        _object_mapping,
        'JSON object of entries, e.g. {"t": {"task": "p.t", "every": 5}}',
    ),
    "default_priority": (_int, "integer"),
    "key_prefix": (_str, "prefix"),
    "celery_compat": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "concurrency": (_int, "integer"),
    "processes": (_int, "integer"),
    "prefetch": (_int, "integer"),
    "visibility_timeout": (_float, "number of seconds"),
    "max_deliveries": (_int, "integer"),
    "worker_heartbeat_interval": (_float, "number of seconds"),
    "worker_lost_after": (_float, "number of seconds"),
    "max_message_size": (_int, "integer number of bytes"),
    "shutdown_grace": (_float, "number of seconds"),
    "broker_unreachable_timeout": (_float, "number of seconds"),
    "broker_connection_retry_on_startup": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "broker_connection_startup_timeout": (_float, "number of seconds"),
    "broker_tls": (_tls_mapping, 'JSON object, e.g. {"ca_certs": "/etc/aiotask/ca.pem"}'),
    "backend_tls": (_tls_mapping, 'JSON object, e.g. {"ca_certs": "/etc/aiotask/ca.pem"}'),
    "task_track_started": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "events": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "max_tasks_per_child": (_int, "integer"),
    "max_memory_per_child": (_int, "integer number of KB"),
    "log_level": (_str, "log level"),
    "unique_for": (_float, "number of seconds"),
    "concurrency_slot_lease": (_float, "number of seconds"),
}


def parse_env(name: str, raw: str) -> object:
    """Turn the AIOTASK_<NAME> string into the field's value, or say what was expected."""
    env_name = ENV_PREFIX + name.upper()
    entry = ENV_PARSERS.get(name)
    if entry is None:  # a field added without a parser: a bug here, caught by a unit test
        raise ConfigurationError(f"{env_name} cannot be set from the environment")
    parser, expected = entry
    try:
        return parser(raw)
    except (ValueError, orjson.JSONDecodeError):
        raise ConfigurationError(f"{env_name}={redact(raw)!r} is not a valid {expected}") from None


def _positive(s: Settings, *names: str) -> None:
    for name in names:
        if getattr(s, name) <= 0:
            raise ConfigurationError(f"setting {name} must be positive, got {getattr(s, name)!r}")


def _non_negative(s: Settings, *names: str) -> None:
    for name in names:
        if getattr(s, name) < 0:
            raise ConfigurationError(f"setting {name} must be >= 0, got {getattr(s, name)!r}")
