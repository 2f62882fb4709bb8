"""Broker and backend URLs: parsing, and the one place secrets are stripped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from aiotask.exceptions import ConfigurationError

#: redis+cluster:// and rediss+cluster:// name a Redis Cluster (host1:port1,host2:port2,...)
REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster"})
BROKER_SCHEMES = REDIS_SCHEMES | {"amqp", "amqps", "memory", "sqlite"}
BACKEND_SCHEMES = REDIS_SCHEMES | {"memory", "sqlite"}

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
        if parts.scheme.lower().endswith("+cluster"):  # h1:p1,h2:p2: the first node stands
            first = parts.netloc.rpartition("@")[2].split(",", 1)[0]  # for all of them
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
