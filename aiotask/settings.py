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
from aiotask._urls import BACKEND_SCHEMES, BROKER_SCHEMES, REDIS_SCHEMES, parse_url, redact
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
    #: Redis, SQLite and PostgreSQL brokers, memory:// for memory://, none for AMQP.
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
    #: Largest encoded result a worker stores, in bytes (0: no cap). A bigger result is stored
    #: as a FAILURE whose error is MessageTooLarge (docs/security.md).
    max_result_size: int = 10 * 1024 * 1024
    #: Message signing (docs/security.md): key id -> secret. Producers sign with
    #: `signing_key_id`; a worker with keys runs only messages signed by one of them.
    signing_keys: Mapping[str, str] = field(default_factory=dict)
    #: The key that signs; may be left out when there is exactly one key.
    signing_key_id: str | None = None
    #: Refuse to start without signing keys (guards against a missing secret at deploy time).
    require_signed: bool = False
    #: Sign stored results with the signing key; readers (AsyncResult, GroupResult, the
    #: dashboard, `aiotask result`) refuse a record that is unsigned or does not verify.
    result_signing: bool = False
    #: Envelope serializer: "json" (default), "msgpack" (extra), "pickle" (only with signing).
    serializer: str = "json"
    #: Payload compression above `compression_threshold` bytes: "none", "zlib", "zstd" (extra).
    compression: str = "none"
    compression_threshold: int = 1024
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
    #: A redis:// or rediss:// broker and backend URL names a Redis Cluster (as redis+cluster://
    #: does); see docs/redis-cluster.md.
    redis_cluster: bool = False
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
    #: Seconds the dashboard keeps a task in its stored history, per state (docs/dashboard.md);
    #: a state not listed is kept until its task reaches one that is.
    history_retention: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_HISTORY_RETENTION)
    )
    #: Redis broker: after each publish, WAIT until this many replicas have the message
    #: (0: off). Closes the window in which a failover loses acknowledged sends
    #: (docs/scaling.md); a send the replicas do not confirm in time raises.
    redis_wait_replicas: int = 0
    #: Seconds a publish waits for redis_wait_replicas.
    redis_wait_timeout: float = 1.0
    #: RabbitMQ work queues: "classic" or "quorum" (replicated over a cluster, with the
    #: server's x-delivery-limit); docs/scaling.md. The broker URL's ?queue_type= wins.
    rabbitmq_queue_type: str = "classic"
    #: Per-queue exceptions to rabbitmq_queue_type: queue name -> "classic" | "quorum".
    rabbitmq_queue_types: Mapping[str, str] = field(default_factory=dict)

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
        _positive(self, "concurrency_slot_lease", "redis_wait_timeout")
        _non_negative(self, "redis_wait_replicas")
        _check_retention(self.history_retention)
        _non_negative(self, "max_message_size", "max_result_size", "compression_threshold")
        if self.require_signed and not self.signing_keys:
            raise ConfigurationError(
                "require_signed is on but no signing key is configured: set "
                "AIOTASK_SIGNING_KEYS=id:secret (or AIOTASK_SIGNING_KEYS_FILE=/path, or "
                "signing_keys={id: secret}); this process refuses to run unsigned"
            )
        if self.result_signing and not self.signing_keys and not self.celery_compat:
            raise ConfigurationError(
                "result_signing is on but no signing key is configured: results are signed "
                "with the message signing keys; set AIOTASK_SIGNING_KEYS=id:secret (or "
                "signing_keys={id: secret})"
            )
        if self.worker_lost_after <= self.worker_heartbeat_interval:
            raise ConfigurationError(
                "worker_lost_after must be longer than worker_heartbeat_interval "
                f"({self.worker_lost_after!r} <= {self.worker_heartbeat_interval!r})"
            )
        _non_negative(self, "processes", "prefetch", "max_tasks_per_child", "max_memory_per_child")
        if self.celery_compat:
            _check_celery(self)
        _check_queue_types(self)
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
        if scheme in REDIS_SCHEMES | {"sqlite", "memory", "postgresql", "postgres"}:
            return self.broker_url
        return None

    def __repr__(self) -> str:
        """Every field, with URL credentials masked (the repr ends up in logs and tracebacks)."""
        shown = ", ".join(f"{f.name}={_shown(self, f.name)}" for f in fields(self))
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
        keys_file = env.get(ENV_PREFIX + "SIGNING_KEYS_FILE")
        if keys_file and "signing_keys" not in values:
            values["signing_keys"] = parse_env("signing_keys", "@" + keys_file)
        values.update(overrides)
        if values.get("celery_compat") and "default_queue" not in values:
            values["default_queue"] = "celery"  # Celery's default queue, so producers meet
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)


#: Settings holding secrets: shown masked in repr, never quoted in an error.
def _check_celery(conf: Settings) -> None:
    """celery_compat speaks Celery's own formats: Celery peers could not read a signed,
    compressed or non-JSON message, and there is no Celery layout on Sentinel or PostgreSQL."""
    if conf.result_signing:
        raise ConfigurationError(
            "celery_compat cannot be combined with result_signing: results are stored in "
            "Celery's format, which Celery peers read and cannot sign or verify"
        )
    if conf.signing_keys or conf.require_signed:
        raise ConfigurationError(
            "celery_compat cannot be combined with signing_keys/require_signed: Celery workers "
            "and producers cannot read or write aiotask's signed messages"
        )
    if conf.serializer != "json" or conf.compression != "none":
        raise ConfigurationError(
            f"celery_compat sends Celery protocol v2 JSON: set serializer='json' and "
            f"compression='none' (got {conf.serializer!r}, {conf.compression!r})"
        )
    for url in (conf.broker_url, conf.backend_url):
        scheme = (url or "").split("://", 1)[0].lower()
        if scheme in REDIS_SCHEMES - {"redis", "rediss"} or scheme in {"postgresql", "postgres"}:
            raise ConfigurationError(
                f"celery_compat works on redis://, rediss:// and amqp:// (Celery's layouts), "
                f"not on {scheme}:// URLs"
            )


#: A week for what needs a look (failures, dead letters, revocations, tasks that never
#: finished), an hour for successes (the bulk of the rows).
DEFAULT_HISTORY_RETENTION: dict[str, float] = {
    "SUCCESS": 3600.0,
    "FAILURE": 7 * 86400.0,
    "REVOKED": 7 * 86400.0,
    "REJECTED": 7 * 86400.0,
    "RETRY": 7 * 86400.0,
    "PENDING": 7 * 86400.0,
    "RECEIVED": 7 * 86400.0,
    "STARTED": 7 * 86400.0,
}

SECRET_FIELDS = frozenset({"signing_keys"})

#: RabbitMQ queue types aiotask declares (streams have no per-message acknowledgement).
RABBITMQ_QUEUE_TYPES = ("classic", "quorum")


def _check_queue_types(conf: Settings) -> None:
    named = {"rabbitmq_queue_type": conf.rabbitmq_queue_type}
    named |= {f"rabbitmq_queue_types[{q!r}]": t for q, t in conf.rabbitmq_queue_types.items()}
    for name, kind in named.items():
        if kind not in RABBITMQ_QUEUE_TYPES:
            raise ConfigurationError(
                f"setting {name} is {kind!r}: use one of {', '.join(RABBITMQ_QUEUE_TYPES)}"
            )


def _shown(s: Settings, name: str) -> str:
    value = getattr(s, name)
    if name in SECRET_FIELDS:
        return "{" + ", ".join(f"{k!r}: '********'" for k in value) + "}"
    return repr(value)


# --- environment parsing: one explicit parser per field -----------------------------------


def parse_signing_keys(raw: str) -> dict[str, str]:
    """`id1:secret1,id2:secret2` (AIOTASK_SIGNING_KEYS) -> {"id1": "secret1", ...}.

    `@/path` reads the same form from a file (one `id:secret` a line, or comma separated;
    `#` starts a comment line), so the secret need not sit in the environment. A JSON object
    works too. Errors name the entry's position, never a secret."""
    text = raw.strip()
    if text.startswith("{"):
        try:
            return _str_mapping(text)
        except (ValueError, orjson.JSONDecodeError):
            raise ValueError("not a JSON object of strings") from None
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read signing keys file {path!r}: {exc.strerror}") from None
    keys: dict[str, str] = {}
    for n, item in enumerate(text.replace("\n", ",").split(","), 1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key_id, sep, secret = item.partition(":")
        if not sep or not key_id.strip() or not secret.strip():
            raise ValueError(f"signing key entry #{n} is not of the form id:secret")
        keys[key_id.strip()] = secret.strip()
    return keys


def _str(raw: str) -> str:
    return raw


def _optional_url(raw: str) -> str | None:
    return None if raw.strip().lower() in {"", "none", "null"} else raw


def _optional_str(raw: str) -> str | None:
    return None if raw.strip().lower() in {"", "none", "null"} else raw.strip()


def _int(raw: str) -> int:
    return int(raw)


def _float(raw: str) -> float:
    return float(raw)


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
        raise ValueError(raw)
    return lowered in {"1", "true", "yes", "on"}


def _queue_types(raw: str) -> dict[str, str]:
    """`q1:quorum,q2:classic` (AIOTASK_RABBITMQ_QUEUE_TYPES), or a JSON object."""
    if raw.strip().startswith("{"):
        return _str_mapping(raw)
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        queue, sep, kind = item.rpartition(":")
        if not sep or not queue.strip():
            raise ValueError(item)
        out[queue.strip()] = kind.strip().lower()
    return out


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


def _retention(raw: str) -> dict[str, float]:
    """`SUCCESS:3600,FAILURE:604800` (or a JSON object) -> {"SUCCESS": 3600.0, ...}."""
    text = raw.strip()
    if text.startswith("{"):
        value = orjson.loads(text)
        if not isinstance(value, dict):
            raise ValueError(raw)
        return {str(k).upper(): float(v) for k, v in value.items()}
    out: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        state, sep, seconds = item.partition(":")
        if not sep:
            raise ValueError(item)
        out[state.strip().upper()] = float(seconds)
    return out


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
    "max_result_size": (_int, "integer number of bytes"),
    "signing_keys": (parse_signing_keys, "list of id:secret pairs (k1:secret1,k2:secret2)"),
    "signing_key_id": (_optional_str, "key id"),
    "require_signed": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "result_signing": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "serializer": (_str, "serializer name (json, msgpack, pickle)"),
    "compression": (_str, "compression name (none, zlib, zstd)"),
    "compression_threshold": (_int, "integer number of bytes"),
    "shutdown_grace": (_float, "number of seconds"),
    "broker_unreachable_timeout": (_float, "number of seconds"),
    "broker_connection_retry_on_startup": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "broker_connection_startup_timeout": (_float, "number of seconds"),
    "broker_tls": (_tls_mapping, 'JSON object, e.g. {"ca_certs": "/etc/aiotask/ca.pem"}'),
    "backend_tls": (_tls_mapping, 'JSON object, e.g. {"ca_certs": "/etc/aiotask/ca.pem"}'),
    "task_track_started": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "redis_cluster": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "events": (_bool, "boolean (true/false, 1/0, yes/no, on/off)"),
    "max_tasks_per_child": (_int, "integer"),
    "max_memory_per_child": (_int, "integer number of KB"),
    "log_level": (_str, "log level"),
    "unique_for": (_float, "number of seconds"),
    "concurrency_slot_lease": (_float, "number of seconds"),
    "redis_wait_replicas": (_int, "integer"),
    "redis_wait_timeout": (_float, "number of seconds"),
    "rabbitmq_queue_type": (_str, "queue type (classic, quorum)"),
    "rabbitmq_queue_types": (_queue_types, "list of queue:type pairs (orders:quorum,bulk:classic)"),
    "history_retention": (_retention, "list of STATE:seconds (SUCCESS:3600,FAILURE:604800)"),
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
    except (ValueError, orjson.JSONDecodeError) as exc:
        if name in SECRET_FIELDS:  # never quote a secret: say what is wrong, not the value
            raise ConfigurationError(f"{env_name} is not a valid {expected}: {exc}") from None
        raise ConfigurationError(f"{env_name}={redact(raw)!r} is not a valid {expected}") from None


def _check_retention(retention: Mapping[str, float]) -> None:
    for state, keep in retention.items():
        if not isinstance(keep, int | float) or isinstance(keep, bool) or keep <= 0:
            raise ConfigurationError(
                f"setting history_retention: {state!r} must be a positive number of "
                f"seconds, got {keep!r}"
            )


def _positive(s: Settings, *names: str) -> None:
    for name in names:
        if getattr(s, name) <= 0:
            raise ConfigurationError(f"setting {name} must be positive, got {getattr(s, name)!r}")


def _non_negative(s: Settings, *names: str) -> None:
    for name in names:
        if getattr(s, name) < 0:
            raise ConfigurationError(f"setting {name} must be >= 0, got {getattr(s, name)!r}")
