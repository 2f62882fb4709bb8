"""Signed canvas state kept in the result backend: a chord's body and a long chain's rest.

A worker publishes these (signed with its own key) when their turn comes, so without a seal
whoever can write the backend could choose what runs next. With signing keys, the App seals
them when it stores them and the worker unseals them before use; a seal that does not verify
means the state is not used (the chord body or the rest of the chain does not run).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import orjson

from aiotask.security.signing import TAG_SIZE
from aiotask.security.wire import BAD_SIGNATURE, UNDECODABLE, Refused

if TYPE_CHECKING:
    from aiotask.security.signing import Keyring

PREFIX = b"\x00ATS\x01"
#: the key of a sealed chain remainder, stored as a record's result
SEALED = "aiotask-sealed"


def seal(keyring: Keyring | None, data: bytes) -> bytes:
    """`data` with a signed header (as is without keys)."""
    if keyring is None:
        return data
    head = PREFIX + bytes([len(keyring.signer)]) + keyring.signer
    return head + keyring.sign(head, data) + data


def unseal(keyring: Keyring | None, blob: bytes) -> bytes:
    """The sealed data; Refused when keys are configured and the seal is missing or wrong.
    Without keys a seal is stripped unchecked (rollout, like unverified messages)."""
    if blob[:5] != PREFIX:
        if keyring is not None:
            raise Refused(BAD_SIGNATURE, "canvas state in the backend is not signed")
        return blob
    start = 6 + blob[5] if len(blob) > 5 else len(blob) + 1
    end = start + TAG_SIZE
    if len(blob) < end:
        raise Refused(UNDECODABLE, "truncated sealed canvas state")
    if keyring is not None and not keyring.verify(
        blob[6:start], blob[start:end], blob[:start], blob[end:]
    ):
        raise Refused(BAD_SIGNATURE, "canvas state in the backend fails its signature")
    return blob[end:]


def seal_steps(keyring: Keyring | None, steps: list[Any]) -> object:
    """A chain remainder as stored in a record (a JSON value)."""
    if keyring is None:
        return steps
    data = seal(keyring, orjson.dumps(steps, option=orjson.OPT_NON_STR_KEYS))
    return {SEALED: base64.b64encode(data).decode()}


def unseal_steps(keyring: Keyring | None, value: object) -> list[Any]:
    """The steps of a stored chain remainder; Refused if they may not be used."""
    if isinstance(value, dict) and isinstance(value.get(SEALED), str):
        try:
            raw = base64.b64decode(value[SEALED], validate=True)
        except ValueError:
            raise Refused(UNDECODABLE, "sealed canvas state is not base64") from None
        steps = orjson.loads(unseal(keyring, raw))
    elif keyring is not None:
        raise Refused(BAD_SIGNATURE, "canvas state in the backend is not signed")
    else:
        steps = value
    if not isinstance(steps, list):
        raise Refused(UNDECODABLE, "stored canvas state is not a list of steps")
    return steps
