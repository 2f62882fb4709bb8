"""Result signing (`result_signing=True`): stored result records sealed by their writer.

Whoever can write the result backend could otherwise choose what `AsyncResult.get()` returns
(a task's "result" that a caller then trusts). With result signing the worker seals each
record it stores with the signing key, and readers verify the seal before using the value:

    offset  size  field
    0       5     b"\\x00ATR\\x01"  (no JSON record starts with NUL; differs from the canvas
                  seal's prefix, so neither kind of tag verifies as the other)
    5       1     key id length k (1..64)
    6       k     key id (ASCII)
    6+k     32    HMAC-SHA256 over bytes 0..6+k and the record
    38+k          the record as stored without signing (JSON with the task id in it)

The tag binds the task id (it is in the record): a record signed for one task, copied under
another's key, is refused. It does not stop a replay of an older record of the same task
(e.g. its STARTED state written again over its SUCCESS); see docs/security.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask.exceptions import ResultSignatureError, SerializationError
from aiotask.security.signing import TAG_SIZE

if TYPE_CHECKING:
    from aiotask.security.signing import Keyring

PREFIX = b"\x00ATR\x01"
_FIXED = len(PREFIX) + 1


def seal(keyring: Keyring, record: bytes) -> bytes:
    """The stored bytes of a signed record."""
    head = PREFIX + bytes([len(keyring.signer)]) + keyring.signer
    return head + keyring.sign(head, record) + record


def unsealed(blob: bytes) -> tuple[bytes, bool]:
    """(the record's JSON, whether it carried a seal), not verified: verification is the
    reader's (`check`), so a writer's own reads and unsigned readers work unchanged."""
    if blob[:1] != b"\x00":
        return blob, False
    if blob[: len(PREFIX)] != PREFIX or len(blob) < _FIXED:
        raise SerializationError("stored result has an unknown binary format")
    start = _FIXED + blob[len(PREFIX)]
    if len(blob) < start + TAG_SIZE:
        raise SerializationError("stored result has a truncated signature")
    return blob[start + TAG_SIZE :], True


def verify(keyring: Keyring, blob: bytes) -> str | None:
    """None when `blob` (a sealed record) verifies under one of the keys, else the reason."""
    if blob[: len(PREFIX)] != PREFIX or len(blob) < _FIXED:
        return "it is not signed"
    start = _FIXED + blob[len(PREFIX)]
    end = start + TAG_SIZE
    kid = blob[_FIXED:start]
    if len(blob) < end:
        return "its signature is truncated"
    if not keyring.verify(kid, blob[start:end], blob[:start], blob[end:]):
        shown = kid.decode("ascii", "replace")[:64]
        if kid not in keyring.keys:
            return f"it is signed with key id {shown!r}, which is not in signing_keys"
        return f"its signature does not verify (key id {shown!r})"
    return None


def check(keyring: Keyring, task_id: str, found_id: str, blob: bytes | None) -> None:
    """Raise ResultSignatureError unless `blob` is a record of `task_id` sealed by a key
    holder (`found_id` is the task id inside the record, already parsed)."""
    reason = "it is not signed" if blob is None else verify(keyring, blob)
    if reason is None and found_id != task_id:
        reason = f"it is a signed record of another task ({found_id[:80]!r})"
    if reason is not None:
        raise ResultSignatureError(task_id, reason)
