"""Envelope serializers: json (default, orjson), msgpack (an extra), pickle (signed only).

Each turns the envelope's plain data (protocol.to_dict) into bytes and back. Decoding is
strict: JSON with duplicate keys, NaN/Infinity or invalid UTF-8 is refused, so every reader
sees the same values (no parser differential between a producer and a worker). Pickle runs
code while it loads, so it is only ever loaded from a message whose signature verified.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import orjson

from aiotask.exceptions import ConfigurationError, ProtocolError, SerializationError

JSON, MSGPACK, PICKLE = "json", "msgpack", "pickle"
SERIALIZERS = (JSON, MSGPACK, PICKLE)
CODES: dict[str, bytes] = {JSON: b"j", MSGPACK: b"m", PICKLE: b"p"}
NAMES: dict[bytes, str] = {v: k for k, v in CODES.items()}


def check(serializer: str, signing: bool) -> None:
    """Refuse an unknown serializer, msgpack without its package, pickle without signing."""
    if serializer not in SERIALIZERS:
        raise ConfigurationError(
            f"serializer must be one of {', '.join(SERIALIZERS)}, got {serializer!r}"
        )
    if serializer == MSGPACK and importlib.util.find_spec("msgpack") is None:
        raise ConfigurationError(
            "serializer='msgpack' needs the msgpack package: pip install 'aiotask[msgpack]'"
        )
    if serializer == PICKLE and not signing:
        raise ConfigurationError(
            "serializer='pickle' needs message signing (signing_keys): unpickling runs "
            "code chosen by whoever wrote the message, so a worker only unpickles messages "
            "whose signature proves they came from a holder of the key"
        )


def dumps(data: dict[str, object], serializer: str) -> bytes:
    """Envelope data -> bytes. TypeError/ValueError for a value the serializer cannot hold."""
    if serializer == JSON:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    if serializer == MSGPACK:
        import msgpack

        return bytes(msgpack.packb(data, use_bin_type=True, datetime=True))
    import pickle  # only for serializer="pickle": not in every worker's memory

    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


def loads(body: bytes, serializer: str) -> dict[Any, Any]:
    """Bytes -> envelope data (a dict), or ProtocolError saying what is wrong."""
    if serializer == JSON:
        data = loads_json(body)
    elif serializer == MSGPACK:
        data = _loads_msgpack(body)
    else:
        data = _loads_pickle(body)
    if not isinstance(data, dict):
        raise not_an_object(data)
    return data


def not_an_object(data: object) -> ProtocolError:
    """The error for decoded envelope data that is not a mapping."""
    return ProtocolError(f"message is not an object ({type(data).__name__})")


def loads_json(body: bytes) -> object:
    """orjson, plus a duplicate-key check that costs one re-encode for orjson-made bytes.

    orjson keeps the last of duplicate keys silently. Bytes that orjson itself produced
    re-encode to the same bytes; only when they do not (another producer's spacing, or a
    duplicate key) is the body parsed again by a strict, slower parser that names the key."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    try:
        same = orjson.dumps(data) == body
    except TypeError:  # e.g. an integer beyond 64 bits
        same = False
    if not same:
        _strict_json(body)
    return data


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ProtocolError(f"message has a duplicate key {dup[:40]!r}")
    return out


def _no_constant(name: str) -> object:
    raise ProtocolError(f"message holds {name}, which JSON does not allow")


def _strict_json(body: bytes) -> None:
    try:
        json.loads(body, object_pairs_hook=_unique, parse_constant=_no_constant)
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None


def _loads_msgpack(body: bytes) -> object:
    try:
        import msgpack
    except ImportError:
        raise ProtocolError(
            "a msgpack message, but this worker lacks the msgpack package: "
            "pip install 'aiotask[msgpack]'"
        ) from None
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, timestamp=3)
    except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError)
        raise ProtocolError(f"message is not valid msgpack: {type(exc).__name__}") from None


def _loads_pickle(body: bytes) -> object:
    import pickle

    try:
        return pickle.loads(body)  # noqa: S301 - only called after the signature verified
    except Exception as exc:
        raise ProtocolError(f"message is not a valid pickle: {type(exc).__name__}") from None


def encode_error(task: str, exc: Exception, serializer: str) -> SerializationError:
    return SerializationError(f"cannot send task {task!r}: {serializer} cannot encode it: {exc}")
