"""The registry record and control request/reply formats (pure)."""

from __future__ import annotations

import orjson
import pytest

from aiotask.control.records import (
    WorkerInfo,
    decode_reply,
    decode_request,
    encode_reply,
)
from aiotask.exceptions import ProtocolError


def info(**changes: object) -> WorkerInfo:
    base: dict[str, object] = {
        "name": "w1",
        "host": "h",
        "pid": 7,
        "queues": ("default", "images"),
        "concurrency": 10,
        "processes": 2,
        "version": "0.1.0",
        "started_at": 1000.0,
        "beat_at": 1100.0,
        "lost_after": 10.0,
    }
    base.update(changes)
    return WorkerInfo(**base)  # type: ignore[arg-type]


def test_record_round_trip_and_state() -> None:
    record = info(done=5, failed=1, active=2, load=(0.5, 0.25, 0.125))
    assert WorkerInfo.decode(record.encode()) == record
    assert record.state(1110.0) == "online"
    assert record.state(1110.5) == "lost"
    data = record.to_dict(1200.0)
    assert data["state"] == "lost" and data["queues"] == ["default", "images"]


@pytest.mark.parametrize(
    "data", [b"nope", b"[]", b'{"name": "w1"}', orjson.dumps({**info().to_dict(), "pid": "x"})]
)
def test_a_bad_record_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a worker record"):
        WorkerInfo.decode(data)


def test_request_addressing() -> None:
    raw = {"op": "inspect", "cmd": "ping", "reply_to": "r", "to": ["w1"], "ns": "app"}
    request = decode_request(raw)
    assert request.for_worker("w1", "app")
    assert not request.for_worker("w2", "app")
    assert not request.for_worker("w1", "other-app")
    assert decode_request(orjson.loads(request.encode())) == request
    everyone = decode_request({"op": "control", "cmd": "shutdown", "reply_to": "r"})
    assert everyone.for_worker("any", "prefix")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ([1], "JSON object"),
        ({"op": "explode", "cmd": "x", "reply_to": "r"}, "unknown control op"),
        ({"op": "inspect", "cmd": 3, "reply_to": "r"}, "'cmd' and 'reply_to'"),
        ({"op": "inspect", "cmd": "ping", "reply_to": ""}, "'cmd' and 'reply_to'"),
        ({"op": "inspect", "cmd": "ping", "reply_to": "r", "args": []}, "'args'"),
        ({"op": "inspect", "cmd": "ping", "reply_to": "r", "to": "w1"}, "'to'"),
        ({"op": "inspect", "cmd": "ping", "reply_to": "r", "ns": 1}, "'ns'"),
    ],
)
def test_malformed_requests_say_what_is_wrong(raw: object, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_request(raw)


def test_replies() -> None:
    assert decode_reply(encode_reply("w1", ok=["a"])) == ("w1", {"ok": ["a"]})
    assert decode_reply(encode_reply("w1", error="no")) == ("w1", {"error": "no"})
    assert decode_reply(b"junk") is None
    assert decode_reply(b'{"ok": 1}') is None
