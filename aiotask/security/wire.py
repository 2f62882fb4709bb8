"""The bytes of a message on the wire: plain envelope v1 JSON, or a secured frame (v2).

With the defaults (no signing keys, json, no compression) a message is the v1 JSON envelope
exactly as before, so old and new code interoperate. Otherwise it is a frame:

    offset  size  field
    0       4     b"\\x00AT\\x02"  (no JSON text starts with NUL; \\x02 is the frame version)
    4       1     serializer     b"j" json | b"m" msgpack | b"p" pickle
    5       1     compression    b"-" none | b"z" zlib | b"s" zstd
    6       4     payload size before compression (big-endian), checked against the cap
    10      1     key id length k (0: unsigned)
    11      k     key id (ASCII)
    11+k    32    HMAC-SHA256 tag, present when k > 0
    ...           payload: the envelope (protocol.to_dict), serialized, then compressed

The tag covers bytes 0..11+k and the payload as sent: the whole envelope (id, task, args,
kwargs, eta, expires, retries, canvas, headers, queue) and the key id, serializer and
compression flags. A worker checks the size, then the tag, and only then decompresses and
decodes anything: a forged message costs it one HMAC over bytes it already holds.

With celery_compat the Wire speaks Celery protocol v2 in kombu's envelope instead (JSON, never
signed or compressed: Celery peers read it), still under `max_message_size` both ways.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from aiotask import protocol
from aiotask._log import get_logger
from aiotask.exceptions import (
    ConfigurationError,
    MessageRefused,
    MessageTooLarge,
    ProtocolError,
    SerializationError,
)
from aiotask.security import codecs, compression
from aiotask.security.signing import TAG_SIZE, Keyring, check_keys

if TYPE_CHECKING:
    from aiotask.protocol import Message
    from aiotask.settings import Settings

log = get_logger(__name__)

PREFIX = b"\x00AT\x02"
_MAGIC = b"\x00AT"
_HEAD = struct.Struct(">4sccIB")
_HEAD_SIZE = _HEAD.size
#: the start of a JSON, uncompressed frame (the common signed one)
_JSON_PLAIN = PREFIX + codecs.CODES[codecs.JSON] + compression.CODES[compression.NONE]
#: dead-letter reasons (exact strings: `aiotask dlq list --reason bad-signature` finds them)
BAD_SIGNATURE = "bad-signature"
TOO_LARGE = "too-large"
UNDECODABLE = "undecodable"


class Refused(Exception):
    """A received body that must not run: `reason` is the dead-letter reason, `detail` is
    for the log (never a secret: at most a key id and a preview of the bytes)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True, repr=False)
class Wire:
    """Encodes messages for sending and decodes received bodies, per an App's settings."""

    max_size: int
    keyring: Keyring | None = None
    serializer: str = codecs.JSON
    compression: str = compression.NONE
    threshold: int = 1024
    #: this side opted in to pickle (serializer="pickle", which requires keys)
    allow_pickle: bool = False
    #: celery_compat: Celery protocol v2 in kombu's envelope, both ways (never signed,
    #: compressed or non-JSON: Celery peers could not read it)
    celery: bool = False
    #: result_signing: stored results are sealed with `keyring` and verified by readers
    sign_results: bool = False
    #: the frame's constant parts, computed once: prefix + serializer; key id length + id
    _lead: bytes = field(init=False, default=b"")
    _kid: bytes = field(init=False, default=b"\x00")
    #: the signer's pre-hashed HMAC pads, so the hot paths need no key lookup or call
    _pads: tuple[Any, Any] = field(init=False, default=(None, None))
    #: hmac.compare_digest, imported with the keys (hmac loads hashlib: see signing._pads)
    _compare: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.celery and (
            self.keyring is not None
            or self.serializer != codecs.JSON
            or self.compression != compression.NONE
        ):
            raise ConfigurationError(
                "celery_compat sends Celery protocol v2 JSON, which Celery peers read: it "
                "cannot be signed, compressed or use another serializer"
            )
        self._lead = PREFIX + codecs.CODES[self.serializer]
        if self.keyring is not None:
            self._kid = bytes([len(self.keyring.signer)]) + self.keyring.signer
            self._pads = self.keyring.keys[self.keyring.signer]
            from hmac import compare_digest

            self._compare = compare_digest

    @classmethod
    def from_settings(cls, conf: Settings) -> Wire:
        """Validate the security settings (ConfigurationError naming the fix) and prepare keys."""
        key_id = check_keys(conf.signing_keys, conf.signing_key_id)
        keyring = Keyring.of(conf.signing_keys, key_id) if key_id is not None else None
        codecs.check(conf.serializer, keyring is not None)
        compression.check(conf.compression)
        return cls(
            conf.max_message_size,
            keyring,
            conf.serializer,
            conf.compression,
            conf.compression_threshold,
            conf.serializer == codecs.PICKLE,
            conf.celery_compat,
            conf.result_signing and keyring is not None,
        )

    @property
    def result_keyring(self) -> Keyring | None:
        """The keys that seal and verify stored results (None: result_signing is off)."""
        return self.keyring if self.sign_results else None

    @property
    def plain(self) -> bool:
        """Messages go out as plain v1 JSON (the default: nothing to sign, compress or swap)."""
        return (
            self.keyring is None
            and self.serializer == codecs.JSON
            and self.compression == compression.NONE
        )

    def __repr__(self) -> str:
        return (
            f"Wire(serializer={self.serializer!r}, compression={self.compression!r}, "
            f"signed={self.keyring is not None}, max_size={self.max_size}, "
            f"celery={self.celery})"
        )

    # --- sending ---------------------------------------------------------------------------
    def encode(self, message: Message) -> bytes:
        """The bytes to publish; MessageTooLarge (nothing sent) past `max_message_size`."""
        limit = self.max_size
        if self.celery or self.plain:
            body = _celery_encode(message) if self.celery else protocol.encode(message)
            if limit and len(body) > limit:
                raise MessageTooLarge(message.task, len(body), limit)
            return body
        data = protocol.to_dict(message)
        try:
            payload = codecs.dumps(data, self.serializer)
        except Exception as exc:  # each serializer raises its own types
            if self.serializer == codecs.JSON:  # the caller words JSON errors per argument
                raise SerializationError(str(exc)) from exc
            raise codecs.encode_error(message.task, exc, self.serializer) from None
        size = len(payload)
        if (limit and size > limit) or size > 0xFFFFFFFF:
            raise MessageTooLarge(message.task, size, limit)
        algorithm = self.compression if size >= self.threshold else compression.NONE
        if algorithm != compression.NONE:
            packed = compression.compress(payload, algorithm)
            if len(packed) >= size:  # incompressible: send as is
                algorithm, packed = compression.NONE, payload
        else:
            packed = payload
        head = self._lead + compression.CODES[algorithm] + size.to_bytes(4, "big") + self._kid
        if self.keyring is not None:  # HMAC-SHA256 from the signer's pads (Keyring.sign, inlined)
            inner = self._pads[0].copy()
            inner.update(head)
            inner.update(packed)
            outer = self._pads[1].copy()
            outer.update(inner.digest())
            body = b"".join((head, outer.digest(), packed))  # one allocation
        else:
            body = head + packed
        if limit and len(body) > limit:
            raise MessageTooLarge(message.task, len(body), limit)
        return body

    # --- receiving -------------------------------------------------------------------------
    def decode(self, body: bytes) -> Message:
        """A received body -> Message, or Refused(reason) when it must be dead-lettered.
        In celery mode a well-formed message this worker will not run (a chord) raises
        MessageRefused, so the consumer can record its FAILURE.

        Order: size, then signature, then decompression (bounded), then parsing."""
        limit = self.max_size
        if limit and len(body) > limit:
            raise Refused(TOO_LARGE, f"{len(body)} bytes, over max_message_size ({limit})")
        if self.celery:
            return _celery(body)
        if self.keyring is not None and body.startswith(_JSON_PLAIN) and len(body) > _HEAD_SIZE:
            # the common signed frame (json, uncompressed), HMAC inlined: it runs once per
            # received message, so no method calls and no key lookup for the signer's own key
            # id. The size field is not compared: it only bounds decompression, and the tag
            # covers it. Anything that does not verify here takes the general path, which
            # says why.
            start = _HEAD_SIZE + body[10]
            end = start + TAG_SIZE
            pads = (
                self._pads
                if body.startswith(self._kid, 10)
                else self.keyring.keys.get(body[_HEAD_SIZE:start])
            )
            if pads is not None:
                payload = body[end:]
                inner = pads[0].copy()
                inner.update(body[:start])
                inner.update(payload)
                outer = pads[1].copy()
                outer.update(inner.digest())
                if self._compare(outer.digest(), body[start:end]):
                    return _parse_signed(payload)
        if body[:4] != PREFIX:
            if body[:3] == _MAGIC:
                raise Refused(UNDECODABLE, f"unknown frame version {body[3:4]!r}")
            if self.keyring is not None:
                raise Refused(BAD_SIGNATURE, "unsigned message (signing keys are configured)")
            return _parse_json(body)
        return self._frame(body)

    def _frame(self, body: bytes) -> Message:
        """Any frame, checked step by step (the fast path above handles the common one)."""
        limit = self.max_size
        if len(body) < _HEAD.size:
            raise Refused(UNDECODABLE, "truncated frame")
        _, ser_code, comp_code, size, klen = _HEAD.unpack_from(body)
        start, verified = self._verify(body, klen)
        serializer = codecs.NAMES.get(ser_code)
        algorithm = compression.NAMES.get(comp_code)
        if serializer is None or algorithm is None:
            raise Refused(UNDECODABLE, f"unknown serializer/compression {ser_code!r}/{comp_code!r}")
        if serializer == codecs.PICKLE and not (verified and self.allow_pickle):
            raise Refused(
                UNDECODABLE,
                "a pickle message is only loaded by a worker with serializer='pickle' and "
                "signing keys, after its signature verified",
            )
        if limit and size > limit:
            raise Refused(TOO_LARGE, f"declares {size} bytes, over max_message_size ({limit})")
        payload = _expand(body[start:], algorithm, limit)
        if len(payload) != size:
            raise Refused(UNDECODABLE, f"payload is {len(payload)} bytes, frame says {size}")
        return _parse(payload, serializer)

    def _verify(self, body: bytes, klen: int) -> tuple[int, bool]:
        """Where the payload starts, and whether its signature verified (with keys, a frame
        that is unsigned or does not verify is Refused; without keys it is not checked)."""
        start = _HEAD.size + klen
        if not klen:
            if self.keyring is not None:
                raise Refused(BAD_SIGNATURE, "unsigned message (signing keys are configured)")
            return start, False
        start += TAG_SIZE
        if len(body) < start:
            raise Refused(UNDECODABLE, "truncated frame")
        if self.keyring is None:
            return start, False
        kid = body[_HEAD.size : _HEAD.size + klen]
        tag = body[start - TAG_SIZE : start]
        if not self.keyring.verify(kid, tag, body[: _HEAD.size + klen], body[start:]):
            shown = kid.decode("ascii", "replace")[:64]
            raise Refused(BAD_SIGNATURE, f"signature does not verify (key id {shown!r})")
        return start, True


def _celery_encode(message: Message) -> bytes:
    from aiotask.celery_compat import v2  # Celery's formats load with celery_compat only

    return v2.encode(message)


def _celery(body: bytes) -> Message:
    from aiotask.celery_compat import v2

    try:
        return v2.decode(body)
    except MessageRefused:
        raise
    except ProtocolError as exc:
        raise Refused(UNDECODABLE, str(exc)) from None
    except RecursionError:
        raise Refused(UNDECODABLE, "nested too deeply") from None


def _expand(payload: bytes, algorithm: str, limit: int) -> bytes:
    if algorithm == compression.NONE:
        return payload
    try:
        return compression.decompress(payload, algorithm, limit)
    except compression.TooLarge as exc:
        raise Refused(TOO_LARGE, f"compressed payload {exc}") from None
    except compression.Corrupt as exc:
        raise Refused(UNDECODABLE, str(exc)) from None


def _parse_signed(payload: bytes) -> Message:
    """JSON whose signature verified: a key holder's own encoder wrote it, so the duplicate-key
    re-check (codecs.loads_json) is skipped; the envelope's types are still checked."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Refused(UNDECODABLE, f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(UNDECODABLE, "message is not a JSON object")
    try:
        return protocol.from_dict(data, payload)
    except ProtocolError as exc:
        raise Refused(UNDECODABLE, str(exc)) from None


def _parse_json(payload: bytes) -> Message:
    """`_parse(payload, codecs.JSON)` for the plain path (once per received message): the
    same checks and errors, without the serializer dispatch of codecs.loads."""
    try:
        data = codecs.loads_json(payload)
        if not isinstance(data, dict):
            raise codecs.not_an_object(data)
        return protocol.from_dict(data, payload)
    except ProtocolError as exc:
        raise Refused(UNDECODABLE, str(exc)) from None
    except RecursionError:
        raise Refused(UNDECODABLE, "nested too deeply") from None


def _parse(payload: bytes, serializer: str) -> Message:
    try:
        return protocol.from_dict(codecs.loads(payload, serializer), payload)
    except ProtocolError as exc:
        raise Refused(UNDECODABLE, str(exc)) from None
    except RecursionError:
        raise Refused(UNDECODABLE, "nested too deeply") from None


#: what `peek` expands at most (a dead letter may be a zip bomb)
PEEK_LIMIT = 64 * 1024 * 1024


def peek(body: bytes, limit: int = PEEK_LIMIT) -> Message:
    """Decode for display (dlq list, inspect) without checking a signature: a frame's JSON or
    msgpack payload is shown unverified, pickle is never loaded; a Celery body (celery_compat)
    is shown through Celery's decoding. ProtocolError if it cannot."""
    try:
        return Wire(limit).decode(body)
    except Refused as exc:
        from aiotask.celery_compat.codec import decode_any

        try:
            return decode_any(body)
        except ProtocolError:
            raise ProtocolError(str(exc)) from None
