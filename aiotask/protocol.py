"""The message envelope, version 1: what travels on every broker (spec: docs/protocol.md).

A message is one JSON object. Fields at their default value are omitted on the wire and
restored on decode, so a no-argument task is a few dozen bytes. Brokers never look inside.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from aiotask.exceptions import ProtocolError, SerializationError

VERSION = 1

Payload = Any  # user data: args, kwargs, results

#: the first hex digit of a version-4 UUID's variant field, by the random digit it replaces:
#: its top two bits set to 10 (RFC 9562), its low two bits kept
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_id() -> str:
    """A random message id: the text of a version-4 UUID, as `str(uuid.uuid4())` gives it
    (122 random bits from os.urandom), in about half the time, without a UUID object on the
    way. Made once per message sent, where uuid4 was a third of building the message."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(slots=True)
class Message:
    """One task invocation. Treated as immutable: a retry or continuation is a new Message
    (`evolve()`); nothing mutates one. Not `frozen=True` on purpose: a frozen dataclass
    costs about 2 µs more per instance, paid on every send and every receive."""

    id: str
    task: str
    args: list[Payload] = field(default_factory=list)
    kwargs: dict[str, Payload] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    #: unix seconds before which the message must not run (countdown / eta / retry delay)
    eta: float | None = None
    #: unix seconds after which the message is not run (state REVOKED)
    expires: float | None = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    group_size: int | None = None
    #: canvas: remaining chain steps (innermost last), callbacks, errbacks, chord reference
    chain: list[Payload] = field(default_factory=list)
    links: list[Payload] = field(default_factory=list)
    errbacks: list[Payload] = field(default_factory=list)
    chord: Payload = None
    headers: dict[str, str] = field(default_factory=dict)
    ignore_result: bool = False
    #: a result backend channel the producer listens on: the worker publishes the result
    #: there too (Redis), so a waiting producer needs no read (RedisBackend.reply_channel)
    reply_to: str | None = None

    def evolve(self, **changes: Any) -> Message:
        """A copy with some fields changed (e.g. retries + 1 and a new eta)."""
        return replace(self, **changes)


_TYPES: dict[str, type | tuple[type, ...]] = {
    "args": list,
    "kwargs": dict,
    "queue": str,
    "priority": int,
    "eta": (int, float),
    "expires": (int, float),
    "retries": int,
    "root_id": str,
    "parent_id": str,
    "group_id": str,
    "group_index": int,
    "group_size": int,
    "chain": list,
    "links": list,
    "errbacks": list,
    "headers": dict,
    "ignore_result": bool,
    "reply_to": str,
}


def encode(message: Message) -> bytes:
    """The wire bytes of a message. Raises SerializationError if a payload is not JSON."""
    try:
        return orjson.dumps(to_dict(message), option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SerializationError(f"task {message.task!r}: cannot encode message: {exc}") from exc


def to_dict(message: Message) -> dict[str, object]:
    """The envelope as plain data (fields at their default left out), for any serializer."""
    m = message
    data: dict[str, object] = {"v": VERSION, "id": m.id, "task": m.task}
    # Straight-line checks (not a loop over fields): this runs once per message sent.
    if m.args:
        data["args"] = m.args
    if m.kwargs:
        data["kwargs"] = m.kwargs
    if m.root_id is not None:
        data["root_id"] = m.root_id
    _delivery_fields(m, data)
    if m.group_id is not None or m.chain or m.links or m.errbacks or m.chord is not None:
        _canvas_fields(m, data)
    return data


def _delivery_fields(m: Message, data: dict[str, object]) -> None:
    if m.queue != "default":
        data["queue"] = m.queue
    if m.priority:
        data["priority"] = m.priority
    if m.eta is not None:
        data["eta"] = m.eta
    if m.expires is not None:
        data["expires"] = m.expires
    if m.retries:
        data["retries"] = m.retries
    if m.parent_id is not None:
        data["parent_id"] = m.parent_id
    if m.headers:
        data["headers"] = m.headers
    if m.ignore_result:
        data["ignore_result"] = True
    if m.reply_to is not None:
        data["reply_to"] = m.reply_to


def _canvas_fields(m: Message, data: dict[str, object]) -> None:
    if m.group_id is not None:
        data["group_id"] = m.group_id
        data["group_index"] = m.group_index
        data["group_size"] = m.group_size
    if m.chain:
        data["chain"] = m.chain
    if m.links:
        data["links"] = m.links
    if m.errbacks:
        data["errbacks"] = m.errbacks
    if m.chord is not None:
        data["chord"] = m.chord


def decode(body: bytes) -> Message:
    """Parse and validate wire bytes. Raises ProtocolError naming what is wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON ({exc}): {preview(body)}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"message is not a JSON object: {preview(body)}")
    return from_dict(data, body)


def from_dict(data: dict[Any, Any], body: bytes = b"") -> Message:
    """Validate decoded envelope data (from any serializer) into a Message; ProtocolError
    naming the field when a known field has the wrong type. `body` is for error messages."""
    version = data.get("v")
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f"unknown message version {version!r} (this worker speaks {VERSION})")
    ident, task = data.get("id"), data.get("task")
    if not isinstance(ident, str) or not ident or not isinstance(task, str) or not task:
        raise ProtocolError(f"message lacks a string 'id' or 'task': {preview(body)}")
    if type(root := data.get("root_id")) is str:
        # what a plain send() carries: v, id, task, root_id and maybe args; the loop below
        # would keep just these (~6,000 instructions less per received message)
        size = len(data)
        reply = data.get("reply_to")
        if type(reply) is str:  # a send whose producer waits for the result
            size -= 1
        elif reply is not None:
            size = 0  # the loop below names the wrong type
        if size == 4:
            return Message(ident, task, root_id=root, reply_to=reply)
        if size == 5 and type(args := data.get("args")) is list:
            return Message(ident, task, args, root_id=root, reply_to=reply)
    return Message(ident, task, **_values(data))


def _values(data: dict[Any, Any]) -> dict[str, Any]:
    """The envelope's known fields, each type-checked (None and unknown fields left out)."""
    values: dict[str, Any] = {}
    for name, value in data.items():
        expected = _TYPES.get(name)
        if expected is None:
            if name == "chord":
                values[name] = value
            continue  # "v", "id", "task", and unknown fields (forward compatibility)
        if value is None:
            continue
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ProtocolError(f"message field {name!r} has the wrong type: {_short(value)}")
        values[name] = value
    if "kwargs" in values or "headers" in values or "eta" in values or "expires" in values:
        _check_values(values)
    return values


def _check_values(values: dict[str, Any]) -> None:
    """What a type check alone misses (binary serializers can carry any key or NaN)."""
    if any(type(k) is not str for k in values.get("kwargs", ())):
        raise ProtocolError("message field 'kwargs' has a key that is not a string")
    headers = values.get("headers", {})
    if any(type(k) is not str or type(v) is not str for k, v in headers.items()):
        raise ProtocolError("message field 'headers' must map strings to strings")
    for name in ("eta", "expires"):
        value = values.get(name)
        if value is not None and not math.isfinite(value):
            raise ProtocolError(f"message field {name!r} is not a finite number: {value!r}")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def preview(body: bytes, limit: int = 120) -> str:
    """A short, printable look at some bytes, for logs about bad messages."""
    text = repr(body[:limit])
    return text + ("..." if len(body) > limit else "")
