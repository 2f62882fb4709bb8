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


#: (user name, role): role "admin" may do everything, "viewer" only reads
Identity = tuple[str, str]
ADMIN, VIEWER = "admin", "viewer"
ANONYMOUS: Identity = ("anonymous", ADMIN)


def _pair(spec: str, option: str) -> tuple[str, str]:
    user, sep, password = spec.partition(":")
    if not sep:
        raise ConfigurationError(f"{option} takes USER:PASSWORD (a ':' between them)")
    return user, password


@dataclass(frozen=True, slots=True)
class Auth:
    """Credentials the dashboard accepts: `user`/`password` (HTTP Basic) and `token` (Bearer)
    may do everything; `viewer_user`/`viewer_password` (HTTP Basic) may only look."""

    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    viewer_user: str | None = field(default=None, repr=False)
    viewer_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for who, user, password in (
            ("", self.user, self.password),
            ("read-only ", self.viewer_user, self.viewer_password),
        ):
            if (user is None) != (password is None):
                raise ConfigurationError(f"dashboard {who}auth needs both a user and a password")
            if user is not None and (not user or ":" in user or not password):
                raise ConfigurationError(
                    f"dashboard {who}auth: the user must be non-empty without ':', "
                    "the password non-empty"
                )
        if self.token is not None and not self.token:
            raise ConfigurationError(f"dashboard auth: {TOKEN_ENV} is set but empty")
        if self.user is not None and self.user == self.viewer_user:
            raise ConfigurationError("the read-only user must not be the admin user")

    def __repr__(self) -> str:
        kinds = [
            kind
            for kind, value in (
                ("basic", self.user),
                ("token", self.token),
                ("read-only", self.viewer_user),
            )
            if value is not None
        ]
        return f"Auth({'+'.join(kinds) or 'none'})"

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.user, self.token, self.viewer_user))

    @classmethod
    def build(
        cls, basic: str | None = None, token: str | None = None, viewer: str | None = None
    ) -> Auth:
        """From `USER:PASSWORD` (the CLI's --auth), a token (None: the environment's; "": none)
        and read-only `USER:PASSWORD` (--read-only-auth)."""
        user, password = _pair(basic, "--auth") if basic else (None, None)
        viewer_user, viewer_password = _pair(viewer, "--read-only-auth") if viewer else (None, None)
        if token is None:
            token = os.environ.get(TOKEN_ENV)
        return cls(user, password, token or None, viewer_user, viewer_password)

    def identify(self, authorization: str | None) -> Identity | None:
        """Who an Authorization header proves to be, or None (constant-time compares)."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token is not None:
            ok = hmac.compare_digest(value.encode(), self.token.encode())
            return ("token", ADMIN) if ok else None
        if scheme != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        for role, known_user, known_password in (
            (ADMIN, self.user, self.password),
            (VIEWER, self.viewer_user, self.viewer_password),
        ):
            if known_user is None or known_password is None:
                continue
            ok_user = hmac.compare_digest(user.encode(), known_user.encode())
            ok_password = hmac.compare_digest(password.encode(), known_password.encode())
            if ok_user and ok_password:
                return known_user, role
        return None

    def allows(self, authorization: str | None) -> bool:
        return self.identify(authorization) is not None


#: Methods that change something: read-only credentials get 403 for them.
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuthMiddleware:
    """401 (with a Basic challenge) without valid credentials, 403 for a read-only user's
    state change; the caller's (user, role) goes into the scope for pages and the audit log."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identity = self.auth.identify(_header(scope, b"authorization"))
        if identity is None:
            body = b'{"error":"authentication required: HTTP Basic or a bearer token"}'
            await _answer(send, 401, body, [(b"www-authenticate", REALM.encode())])
            return
        if identity[1] != ADMIN and scope["method"] in UNSAFE:
            body = b'{"error":"read-only credentials: this changes something, log in as admin"}'
            await _answer(send, 403, body, [])
            return
        scope["aiotask.identity"] = identity
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def identity_of(scope: Scope) -> Identity:
    found: Identity = scope.get("aiotask.identity", ANONYMOUS)
    return found


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
