"""Who may use the dashboard: HTTP Basic and/or a bearer token, and CSRF for page forms.

Credentials are compared in constant time and never logged or shown in a repr. With neither
set, every request passes (fine on 127.0.0.1; `aiotask dashboard` refuses to bind beyond
loopback without auth). Page forms carry a double-submit token (a random cookie echoed in
a hidden field); JSON calls must be `application/json`, which a cross-site form cannot send
without a CORS preflight, and a POST whose Origin is another host is refused either way.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

#: The environment variable holding the bearer token (never logged).
TOKEN_ENV = "AIOTASK_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a secret
CSRF_COOKIE = "aiotask_csrf"
CSRF_FIELD = "csrf"
REALM = 'Basic realm="aiotask", charset="UTF-8"'


@dataclass(frozen=True, slots=True)
class Auth:
    """Credentials the dashboard accepts: `user`/`password` (HTTP Basic), `token` (Bearer)."""

    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigurationError("dashboard auth needs both a user and a password")
        if self.user is not None and (not self.user or ":" in self.user or not self.password):
            raise ConfigurationError(
                "dashboard auth: the user must be non-empty without ':', the password non-empty"
            )
        if self.token is not None and not self.token:
            raise ConfigurationError(f"dashboard auth: {TOKEN_ENV} is set but empty")

    def __repr__(self) -> str:
        kinds = [k for k, v in (("basic", self.user), ("token", self.token)) if v is not None]
        return f"Auth({'+'.join(kinds) or 'none'})"

    @property
    def enabled(self) -> bool:
        return self.user is not None or self.token is not None

    @classmethod
    def build(cls, basic: str | None = None, token: str | None = None) -> Auth:
        """From `USER:PASSWORD` (the CLI's --auth) and a token (default: the environment)."""
        user = password = None
        if basic:
            user, sep, password = basic.partition(":")
            if not sep:
                raise ConfigurationError("--auth takes USER:PASSWORD (a ':' between them)")
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        return cls(user, password, token)

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries valid credentials (constant-time compares)."""
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token is not None:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme == "basic" and self.user is not None and self.password is not None:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, _, password = decoded.partition(":")
            ok_user = hmac.compare_digest(user.encode(), self.user.encode())
            ok_password = hmac.compare_digest(password.encode(), self.password.encode())
            return ok_user and ok_password
        return False


class AuthMiddleware:
    """401 (with a Basic challenge) for every HTTP request without valid credentials."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.auth.enabled:
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        if self.auth.allows(header):
            await self.app(scope, receive, send)
            return
        body = b'{"error":"authentication required: HTTP Basic or a bearer token"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", REALM.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    """Double submit: the form's token equals the cookie's (both present)."""
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """No Origin header (curl, old browsers) passes; otherwise its host:port must be ours."""
    if origin is None:
        return True
    if origin == "null" or host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()
