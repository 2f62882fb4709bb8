"""Broker and backend URLs: parsing, and the one place secrets are stripped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from aiotask.exceptions import ConfigurationError

#: Redis behind Sentinel: redis+sentinel://[user:pass@]host1:p1,host2:p2/db?service=NAME;
#: rediss+sentinel:// is the same over TLS (to the sentinels and to the Redis servers)
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
#: redis+cluster:// and rediss+cluster:// name a Redis Cluster (host1:port1,host2:port2,...)
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
#: amqp:// and amqps:// may name several nodes of a cluster (host1:port1,host2:port2, or
#: full URLs joined by `;`); see brokers/_rabbitmq_nodes.py.
AMQP_SCHEMES = frozenset({"amqp", "amqps"})
REDIS_SCHEMES = frozenset({"redis", "rediss"}) | SENTINEL_SCHEMES | CLUSTER_SCHEMES
BROKER_SCHEMES = REDIS_SCHEMES | {"amqp", "amqps", "memory", "sqlite", "postgresql", "postgres"}
BACKEND_SCHEMES = REDIS_SCHEMES | {"memory", "sqlite", "postgresql", "postgres"}

MASK = "***"
#: A URL inside free text: a scheme, then everything up to whitespace, `"`, `<`, `>`, or the
#: start of another URL after `;`, `,` or `'` (lists of URLs). `'` is legal in a password.
_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)"
    r"(?P<rest>(?:(?![;,'][a-zA-Z][a-zA-Z0-9+.-]*://)[^\s\"<>`])*)"
)
#: Query keys whose values are secrets. redis-py passes *every* unknown query key to its
#: connection as a keyword (so `?password=`, `?ssl_password=`, `?sentinel_password=` all work);
#: aio-pika takes credentials from the userinfo only. Matched as substrings of the
#: lower-cased, percent-decoded key, so new variants (`certificate_password`) are covered.
_SECRET_KEY_PARTS = ("password", "passwd", "pwd", "secret", "token", "credential", "apikey")
_SECRET_KEYS = frozenset({"pass", "api_key", "auth_key", "key_password"})
#: TLS file locations (and inline CA data) are masked too: where the private key lives is
#: nobody's business in a log line. redis-py's names, then aio-pika's.
_TLS_FILE_KEYS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path", "ssl_ca_data"}
    | {"cafile", "capath", "cadata", "certfile", "keyfile"}
)
_PORT = re.compile(r"\d*")


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A URL split into what brokers and backends need."""

    scheme: str
    url: str
    host: str
    port: int | None
    path: str

    @property
    def sqlite_path(self) -> str:
        """The file of a sqlite:///path URL (sqlite:///rel.db or sqlite:////abs.db)."""
        return self.url.split("://", 1)[1].removeprefix("/") or "aiotask.db"


def redact(text: str) -> str:
    """Mask every credential of every URL in `text`; use it before logging or raising.

    Masked: the password of the userinfo (`user:***@`, also when the password holds raw
    `@`, `/`, `?` or `#` that make the URL malformed), and the value of every query parameter
    that names a secret (`?password=***`, `ssl_password`, `sentinel_password`, `token`, ...)
    or a TLS file (`ssl_keyfile=***`, `ssl_certfile`, `ssl_ca_certs`, `cafile`, ...).
    User names, hosts, ports and paths stay, so the message still says where it went.
    """
    if "://" not in text:
        return text
    return _URL.sub(_redact_one, text)


def _redact_one(match: re.Match[str]) -> str:
    rest = _redact_userinfo(match["rest"])
    query_at = rest.find("?")
    if query_at >= 0:
        rest = rest[: query_at + 1] + _redact_query(rest[query_at + 1 :])
    return match["scheme"] + rest


def _redact_userinfo(rest: str) -> str:
    end = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority = rest[:end]
    if "@" in authority:  # well formed: the userinfo ends at the authority's last '@'
        at = authority.rindex("@")
    else:
        # A password with a raw '/', '?' or '#' splits the authority early. `host:port` is not
        # a password; anything else before a later '@' is.
        colon = authority.find(":")
        at = rest.rfind("@")
        if colon < 0 or at < end:
            return rest
        user, port = authority[:colon], authority[colon + 1 :]
        before_query = rest[: rest.find("?")] if "?" in rest else rest
        if user and _PORT.fullmatch(port) and "@" not in before_query:
            return rest
    userinfo = rest[:at]
    user, colon_sep, password = userinfo.partition(":")
    if not colon_sep or not password:
        return rest  # a user name alone is not a secret
    return f"{user}:{MASK}{rest[at:]}"


def _redact_query(query: str) -> str:
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        key, eq, value = parts[i].partition("=")
        if eq and value and _is_secret(key):
            parts[i] = f"{key}={MASK}"
    return "".join(parts)


def _is_secret(key: str) -> bool:
    name = unquote(key.replace("+", " ")).strip().lower().replace("-", "_")
    return (
        name in _SECRET_KEYS
        or name in _TLS_FILE_KEYS
        or any(part in name for part in _SECRET_KEY_PARTS)
    )


def as_cluster_url(url: str, cluster: bool) -> str:
    """`redis://` -> `redis+cluster://` (and rediss) when the `redis_cluster` setting is on."""
    scheme, sep, rest = url.partition("://")
    if cluster and sep and scheme.lower() in {"redis", "rediss"}:
        return f"{scheme.lower()}+cluster://{rest}"
    return url


def parse_url(url: str, *, allowed: frozenset[str], what: str) -> ParsedURL:
    """Validate a broker/backend URL, naming the problem without leaking the password."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"bad {what} URL {redact(str(url))!r}: expected scheme://..., one of "
            f"{', '.join(sorted(allowed))}"
        )
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() in SENTINEL_SCHEMES:
            return _sentinel(parts.scheme.lower(), url, what)
        if parts.scheme.lower() in CLUSTER_SCHEMES | AMQP_SCHEMES:  # h1:p1,h2:p2: the first
            first = parts.netloc.rpartition("@")[2].split(",", 1)[0]  # node stands for all
            parts = parts._replace(netloc=first)
        port = parts.port
    except ValueError:  # its text can quote a password taken for a port: not shown
        raise ConfigurationError(
            f"bad {what} URL {redact(url)!r}: the host or port part is not valid (in a "
            "password, percent-encode '@', ':', '/', '?' and '#')"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        raise ConfigurationError(
            f"unsupported {what} URL scheme {scheme!r} in {redact(url)!r}: use one of "
            f"{', '.join(sorted(allowed))}"
        )
    return ParsedURL(scheme, url, parts.hostname or "", port, parts.path)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A redis+sentinel:// URL taken apart: where the sentinels are and what to ask them."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    #: the rest of the query, for the Redis connections (e.g. sentinel_password)
    query: tuple[tuple[str, str], ...]


def parse_sentinel(url: str) -> SentinelURL:
    """`redis+sentinel://[user:pass@]h1:p1,h2:p2/db?service=mymaster`; the password (in the
    userinfo) is for the Redis servers; `sentinel_password=` in the query for the sentinels."""
    what = "Redis Sentinel"
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = port, "26379"
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"bad {what} URL {redact(url)!r}: expected host:port[,host:port...] after //"
            )
        sentinels.append((host.strip("[]"), int(port)))
    query = [tuple(kv.partition("=")[::2]) for kv in re.split("[&;]", parts.query) if kv]
    pairs = tuple((unquote(k), unquote(v)) for k, v in query)
    services = [v for k, v in pairs if k == "service"]
    if not services or not services[0]:
        raise ConfigurationError(
            f"bad {what} URL {redact(url)!r}: name the monitored primary with ?service=NAME "
            "(the name in `sentinel monitor NAME ...`)"
        )
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ConfigurationError(f"bad {what} URL {redact(url)!r}: the path is a db number")
    return SentinelURL(
        sentinels=tuple(sentinels),
        service=services[0],
        db=int(path),
        username=username,
        password=password,
        query=tuple((k, v) for k, v in pairs if k != "service"),
    )


def _sentinel(scheme: str, url: str, what: str) -> ParsedURL:
    try:
        parsed = parse_sentinel(url)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("Redis Sentinel", what, 1)) from None
    host, port = parsed.sentinels[0]
    return ParsedURL(scheme, url, host, port, f"/{parsed.db}")
