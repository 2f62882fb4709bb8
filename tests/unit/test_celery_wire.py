"""celery_compat inside the security Wire: Celery protocol v2 both ways under the size cap, the
consumer's two kinds of refusal, display of Celery bodies, and the settings it cannot honour."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aiotask import protocol
from aiotask.celery_compat import envelope, v2
from aiotask.exceptions import ConfigurationError, MessageRefused, MessageTooLarge, ProtocolError
from aiotask.protocol import Message
from aiotask.security import TOO_LARGE, UNDECODABLE, Refused, Wire, peek
from aiotask.security.signing import Keyring
from aiotask.settings import Settings

SECRET = "celery-wire-test-secret-0123456789"


def _wire(**overrides: Any) -> Wire:
    return Wire.from_settings(Settings(broker_url="memory://", celery_compat=True, **overrides))


def test_celery_mode_sends_protocol_v2_that_it_reads_back() -> None:
    wire = _wire()
    message = Message("id-1", "proj.add", args=[1, 2], kwargs={"z": 3}, queue="celery")
    body = wire.encode(message)
    sent, expected = envelope.loads(body), envelope.loads(v2.encode(message))
    assert (sent.body, sent.headers) == (expected.body, expected.headers)  # Celery's v2
    with pytest.raises(ProtocolError):
        protocol.decode(body)
    back = wire.decode(body)
    assert (back.id, back.task, back.args, back.kwargs) == ("id-1", "proj.add", [1, 2], {"z": 3})


def test_celery_mode_keeps_the_size_cap_both_ways() -> None:
    wire = _wire(max_message_size=300)
    big = Message("id-2", "proj.add", args=["x" * 400])
    with pytest.raises(MessageTooLarge, match="max_message_size"):
        wire.encode(big)
    body = _wire().encode(big)
    with pytest.raises(Refused) as caught:
        wire.decode(body)
    assert caught.value.reason == TOO_LARGE


def test_celery_mode_refusals_chord_is_message_refused_garbage_is_undecodable() -> None:
    wire = _wire()
    chord = envelope.Envelope(
        orjson.dumps([[1], {}, {"chord": {"task": "proj.tsum"}}]),
        {"task": "proj.add", "id": "c-1"},
    ).dumps()
    with pytest.raises(MessageRefused, match="chord") as refused:
        wire.decode(chord)
    assert (refused.value.task_id, refused.value.task) == ("c-1", "proj.add")
    with pytest.raises(Refused) as caught:
        wire.decode(b"not a kombu message")
    assert caught.value.reason == UNDECODABLE
    with pytest.raises(Refused) as caught:  # aiotask's own envelope is not Celery's
        wire.decode(protocol.encode(Message("id-3", "proj.add")))
    assert caught.value.reason == UNDECODABLE


def test_peek_shows_celery_bodies_and_aiotask_frames() -> None:
    message = Message("id-4", "proj.mul", args=[2, 3])
    assert peek(v2.encode(message)).task == "proj.mul"
    signed = Wire.from_settings(Settings(broker_url="memory://", signing_keys={"k1": SECRET}))
    assert peek(signed.encode(message)).task == "proj.mul"
    with pytest.raises(ProtocolError):
        peek(b"neither kind")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"signing_keys": {"k1": SECRET}}, "signing"),
        ({"serializer": "msgpack"}, "serializer='json'"),
        ({"compression": "zlib"}, "compression='none'"),
        ({"broker_url": "redis+sentinel://h1:26379/0?service=m"}, "redis\\+sentinel"),
        ({"broker_url": "postgresql://localhost/test"}, "postgresql"),
        ({"broker_url": "amqp://localhost", "result_backend": "postgres://h/db"}, "postgres"),
    ],
)
def test_settings_celery_peers_cannot_read_are_refused(
    overrides: dict[str, Any], match: str
) -> None:
    base: dict[str, Any] = {"broker_url": "memory://", "celery_compat": True}
    with pytest.raises(ConfigurationError, match=f"celery_compat.*{match}|{match}.*celery"):
        Settings(**{**base, **overrides})
    Settings(**{**base, **overrides, "celery_compat": False})  # fine without celery_compat


def test_wire_built_directly_refuses_signing_in_celery_mode() -> None:
    with pytest.raises(ConfigurationError, match="celery_compat"):
        Wire(1024, Keyring.of({"k1": SECRET}, "k1"), celery=True)
    with pytest.raises(ConfigurationError, match="celery_compat"):
        Wire(1024, serializer="msgpack", celery=True)
