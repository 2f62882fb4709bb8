"""HMAC-SHA256 message signing: producers sign with the current key, workers accept any key.

Keys are parsed and held here only. A `Keyring` never shows a secret: its repr lists key ids,
and every error names the key id, never the secret. The hot path is one `hmac` copy of a key
object prepared once (the key's inner and outer pads are hashed a single time) plus two
`update` calls over bytes already in memory.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Bytes of an HMAC-SHA256 tag.
TAG_SIZE = 32
#: Longest key id (it travels in every signed message, so keep ids short: "k2", "2026-11").
MAX_KEY_ID = 64
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


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """Prepared HMAC keys: `signer` signs, every key verifies (rotation)."""

    #: key id (bytes, as on the wire) -> an HMAC object already keyed, copied per message
    keys: Mapping[bytes, hmac.HMAC]
    signer: bytes

    @classmethod
    def of(cls, secrets: Mapping[str, str | bytes], key_id: str) -> Keyring:
        prepared = {
            kid.encode(): hmac.new(
                s.encode() if isinstance(s, str) else s, digestmod=hashlib.sha256
            )
            for kid, s in secrets.items()
        }
        return cls(prepared, key_id.encode())

    def sign(self, *parts: bytes) -> bytes:
        """The tag of `parts` (concatenated) under the signing key."""
        mac = self.keys[self.signer].copy()
        for part in parts:
            mac.update(part)
        return mac.digest()

    def verify(self, key_id: bytes, tag: bytes, *parts: bytes) -> bool:
        """True when `tag` is the tag of `parts` under key `key_id` (constant-time compare)."""
        base = self.keys.get(key_id)
        if base is None:
            return False
        mac = base.copy()
        for part in parts:
            mac.update(part)
        return hmac.compare_digest(mac.digest(), tag)

    def __repr__(self) -> str:
        ids = ", ".join(sorted(k.decode() for k in self.keys))
        return f"Keyring(signer={self.signer.decode()!r}, ids=[{ids}])"
