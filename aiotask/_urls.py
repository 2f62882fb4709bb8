"""Broker and backend URLs: parsing, and the one place secrets are stripped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiotask.exceptions import ConfigurationError

BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "memory", "sqlite"})
BACKEND_SCHEMES = frozenset({"redis", "rediss", "memory", "sqlite"})

_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@"
)


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
    """Replace the password of every URL in `text` with '***'. Use it before logging or raising."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def parse_url(url: str, *, allowed: frozenset[str], what: str) -> ParsedURL:
    """Validate a broker/backend URL, naming the problem without leaking the password."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"bad {what} URL {redact(str(url))!r}: expected scheme://..., one of "
            f"{', '.join(sorted(allowed))}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad {what} URL {redact(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        raise ConfigurationError(
            f"unsupported {what} URL scheme {scheme!r} in {redact(url)!r}: use one of "
            f"{', '.join(sorted(allowed))}"
        )
    return ParsedURL(scheme, url, parts.hostname or "", port, parts.path)
