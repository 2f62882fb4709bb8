"""HMAC-SHA256 message signing: producers sign with the current key, workers accept any key.

Keys are parsed and held here only. A `Keyring` never shows a secret: its repr lists key ids,
and every error names the key id, never the secret. The hot path is two copies of hash
states prepared once per key (the RFC 2104 inner and outer pads), three updates over bytes
already in memory and two digests, all in C.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Bytes of an HMAC-SHA256 tag.
TAG_SIZE = 32
#: Longest key id (it travels in every signed message, so keep ids short: "k2", "2026-11").
MAX_KEY_ID = 64
#: SHA-256's block size, for the HMAC pads.
_BLOCK = 64
#: A key shorter than this is refused: HMAC is only as strong as its secret.
MIN_SECRET = 16


def check_keys(keys: Mapping[str, str], key_id: str | None) -> str | None:
    """Validate the key settings; return the key id producers sign with (None: no signing).
    Errors name key ids, never a secret."""
    if not hasattr(keys, "items"):
        raise ConfigurationError("signing_keys must be a mapping of key id to secret")
    for kid, secret in keys.items():
        _check_key(kid, secret)
    if not keys:
        if key_id:
            raise ConfigurationError(
                f"signing_key_id is {key_id!r} but signing_keys is empty: set "
                "AIOTASK_SIGNING_KEYS=id:secret (or signing_keys={id: secret})"
            )
        return None
    if key_id is None and len(keys) == 1:
        return next(iter(keys))
    if key_id is None or key_id not in keys:
        raise ConfigurationError(
            f"signing_key_id {key_id!r} does not name one of signing_keys: set it to the key "
            f"that signs (one of {', '.join(sorted(keys))})"
        )
    return key_id


def _check_key(kid: object, secret: object) -> None:
    if not isinstance(kid, str) or not 0 < len(kid.encode()) <= MAX_KEY_ID:
        raise ConfigurationError(f"signing key ids must be 1-{MAX_KEY_ID} byte strings")
    if not kid.isascii() or not kid.isprintable() or ":" in kid or "," in kid:
        raise ConfigurationError(
            f"signing key id {kid!r} must be printable ASCII without ':' or ','"
        )
    if not isinstance(secret, str | bytes) or len(secret) < MIN_SECRET:
        raise ConfigurationError(
            f"signing key {kid!r} is too short: use at least {MIN_SECRET} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def _pads(secret: str | bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once, up front: a
    tag then costs two C-level hash copies, three updates and two digests, with no Python
    `hmac` object per message (its `copy()` is a Python method, several times slower).
    hashlib is imported here, with the first key: it costs an idle worker 0.7 MiB of RSS
    (OpenSSL's digests), and a worker without signing keys on SQLite never needs it."""
    import hashlib

    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """Prepared HMAC keys: `signer` signs, every key verifies (rotation)."""

    #: key id (bytes, as on the wire) -> the key's pre-hashed (inner, outer) pads
    keys: Mapping[bytes, tuple[Any, Any]]
    signer: bytes

    @classmethod
    def of(cls, secrets: Mapping[str, str | bytes], key_id: str) -> Keyring:
        return cls({kid.encode(): _pads(s) for kid, s in secrets.items()}, key_id.encode())

    def sign(self, head: bytes, payload: bytes) -> bytes:
        """The tag of `head + payload` under the signing key."""
        return _tag(self.keys[self.signer], head, payload)

    def verify(self, key_id: bytes, tag: bytes, head: bytes, payload: bytes) -> bool:
        """True when `tag` is the tag of `head + payload` under key `key_id` (constant-time
        compare); False for an unknown key id."""
        from hmac import compare_digest  # see _pads: only with signing keys

        pads = self.keys.get(key_id)
        if pads is None:
            return False
        inner = pads[0].copy()  # _tag(), inlined: this runs once per received message
        inner.update(head)
        inner.update(payload)
        outer = pads[1].copy()
        outer.update(inner.digest())
        return compare_digest(outer.digest(), tag)

    def __repr__(self) -> str:
        ids = ", ".join(sorted(k.decode() for k in self.keys))
        return f"Keyring(signer={self.signer.decode()!r}, ids=[{ids}])"


def _tag(pads: tuple[Any, Any], head: bytes, payload: bytes) -> bytes:
    inner = pads[0].copy()
    inner.update(head)
    inner.update(payload)
    outer = pads[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest
