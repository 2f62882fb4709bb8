"""The secured wire format (aiotask/security): signing, rotation, caps, compression, codecs,
and the settings that configure them. Pure: no server."""

from __future__ import annotations

import struct
import sys
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from aiotask import App
from aiotask.exceptions import ConfigurationError, MessageTooLarge, SerializationError
from aiotask.protocol import Message, encode
from aiotask.security import BAD_SIGNATURE, TOO_LARGE, UNDECODABLE, Refused, Wire, peek
from aiotask.security.wire import PREFIX
from aiotask.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

SECRET1 = "s3cret-one-0123456789abcdef"
SECRET2 = "s3cret-two-0123456789abcdef"
KEYS = {"k1": SECRET1, "k2": SECRET2}
MSG = Message(
    "id-1",
    "proj.add",
    [1, "two", {"three": 3.5}],
    {"x": "y" * 3000},
    eta=1.5e9,
    expires=2.5e9,
    retries=2,
    root_id="root",
    parent_id="parent",
    group_id="g",
    group_index=0,
    group_size=2,
    chain=[{"t": "task", "task": "proj.next", "id": "n1"}],
    headers={"h": "v"},
)


def wire(**settings: Any) -> Wire:
    return Wire.from_settings(Settings(**settings))


def refused(w: Wire, body: bytes) -> Refused:
    with pytest.raises(Refused) as info:
        w.decode(body)
    return info.value


CONFIGS: list[dict[str, Any]] = [
    {},
    {"signing_keys": KEYS, "signing_key_id": "k1"},
    {"compression": "zlib"},
    {"compression": "zstd", "signing_keys": KEYS, "signing_key_id": "k2"},
    {"serializer": "msgpack"},
    {"serializer": "msgpack", "compression": "zlib", "signing_keys": {"k": SECRET1}},
    {"serializer": "pickle", "signing_keys": KEYS, "signing_key_id": "k1"},
]


@pytest.mark.parametrize("settings", CONFIGS)
def test_every_configuration_round_trips(settings: dict[str, Any]) -> None:
    w = wire(**settings)
    assert w.decode(w.encode(MSG)) == MSG


def test_the_default_is_the_plain_v1_envelope_byte_for_byte() -> None:
    assert wire().encode(MSG) == encode(MSG)


def test_compression_is_flagged_and_only_above_the_threshold() -> None:
    w = wire(compression="zlib", compression_threshold=1024)
    big = w.encode(MSG)
    assert big[:6] == PREFIX + b"jz" and len(big) < len(encode(MSG)) / 5
    small = w.encode(Message("i", "proj.add", [1]))
    assert small[:6] == PREFIX + b"j-"


def test_a_signed_message_verifies_under_any_configured_key_rotation() -> None:
    old = wire(signing_keys={"k1": SECRET1})
    rotated = wire(signing_keys=KEYS, signing_key_id="k2")
    assert rotated.decode(old.encode(MSG)) == MSG  # old producers still accepted
    body = rotated.encode(MSG)
    assert body[11:13] == b"k2"  # signs with the current key
    assert refused(old, body).reason == BAD_SIGNATURE  # an old worker lacks k2


@pytest.mark.parametrize("position", [0.0, 0.1, 0.3, 0.5, 0.7, 0.99])
def test_any_changed_byte_is_a_bad_signature_or_refused(position: float) -> None:
    w = wire(signing_keys=KEYS, signing_key_id="k1", compression="zlib")
    body = bytearray(w.encode(MSG))
    at = max(4, int(len(body) * position))
    body[at] ^= 0x01
    assert refused(w, bytes(body)).reason in {BAD_SIGNATURE, UNDECODABLE}


def test_tampered_payload_with_the_tag_of_another_message_is_refused() -> None:
    w = wire(signing_keys=KEYS, signing_key_id="k1")
    a, b = w.encode(MSG), w.encode(MSG.evolve(args=[666]))
    head_and_tag = 11 + 2 + 32
    assert refused(w, a[:head_and_tag] + b[head_and_tag:]).reason == BAD_SIGNATURE


def test_unsigned_wrong_key_and_unknown_key_id_are_bad_signatures() -> None:
    worker = wire(signing_keys=KEYS, signing_key_id="k1")
    assert refused(worker, encode(MSG)).reason == BAD_SIGNATURE  # plain JSON
    assert refused(worker, wire(compression="zlib").encode(MSG)).reason == BAD_SIGNATURE
    forger = wire(signing_keys={"k1": "another-secret-0123456789"})
    assert refused(worker, forger.encode(MSG)).reason == BAD_SIGNATURE
    stranger = wire(signing_keys={"k9": SECRET1})
    e = refused(worker, stranger.encode(MSG))
    assert e.reason == BAD_SIGNATURE and "k9" in e.detail


def test_a_worker_without_keys_reads_signed_messages_unverified_for_rollout() -> None:
    assert wire().decode(wire(signing_keys=KEYS, signing_key_id="k1").encode(MSG)) == MSG


def test_the_error_text_never_holds_a_secret() -> None:
    worker = wire(signing_keys=KEYS, signing_key_id="k1")
    forged = wire(signing_keys={"k2": "forged-secret-0123456789"}).encode(MSG)
    e = refused(worker, forged)
    assert SECRET1 not in str(e) and SECRET2 not in str(e)
    assert SECRET1 not in repr(worker) and SECRET1 not in repr(worker.keyring)


# --- size caps -------------------------------------------------------------------------------


def test_send_cap_raises_message_too_large_naming_task_and_size() -> None:
    for settings in CONFIGS:
        w = wire(max_message_size=1000, **settings)
        with pytest.raises(MessageTooLarge, match=r"proj\.add.*bytes") as info:
            w.encode(MSG.evolve(args=["z" * 5000]))
        assert isinstance(info.value, SerializationError) and info.value.task == "proj.add"


def test_receive_cap_refuses_before_decoding() -> None:
    body = wire(max_message_size=0).encode(MSG)
    assert refused(wire(max_message_size=100), body).reason == TOO_LARGE
    # a frame that declares a size over the cap is refused before it is expanded
    w = wire(compression="zlib", max_message_size=0)
    assert refused(wire(compression="zlib", max_message_size=200), w.encode(MSG)).reason == (
        TOO_LARGE
    )


def _frame(payload: bytes, size: int, comp: bytes, ser: bytes = b"j") -> bytes:
    return struct.pack(">4sccIB", PREFIX, ser, comp, size, 0) + payload


def test_a_zlib_bomb_is_too_large_and_never_expanded_in_full() -> None:
    inner = b'{"v":1,"id":"x","task":"t","args":["' + b"a" * (64 << 20) + b'"]}'
    bomb = zlib.compress(inner, 9)
    assert len(bomb) < 100_000
    # it lies about its size: the bounded decompressor still stops at the cap
    e = refused(wire(max_message_size=1 << 20), _frame(bomb, 100, b"z"))
    assert e.reason == TOO_LARGE


def test_a_zstd_bomb_is_too_large() -> None:
    zstandard = pytest.importorskip("zstandard")
    bomb = zstandard.ZstdCompressor(level=19).compress(b"a" * (64 << 20))
    e = refused(wire(max_message_size=1 << 20), _frame(bomb, 100, b"s"))
    assert e.reason == TOO_LARGE


def test_corrupt_or_lying_frames_are_undecodable() -> None:
    w = wire()
    ok = zlib.compress(encode(MSG))
    assert refused(w, _frame(b"not zlib", 10, b"z")).reason == UNDECODABLE
    assert refused(w, _frame(ok[:-5], 10, b"z")).reason == UNDECODABLE  # truncated
    assert refused(w, _frame(ok, 10, b"z")).reason == UNDECODABLE  # size mismatch
    assert refused(w, _frame(b"", 0, b"?")).reason == UNDECODABLE
    assert refused(w, _frame(b"", 0, b"-", b"?")).reason == UNDECODABLE
    assert refused(w, PREFIX + b"j").reason == UNDECODABLE
    assert refused(w, b"\x00AT\x07rest").reason == UNDECODABLE  # a future frame version
    signed_head = struct.pack(">4sccIB", PREFIX, b"j", b"-", 2, 2) + b"k1" + b"short"
    assert refused(w, signed_head).reason == UNDECODABLE


def test_pickle_is_loaded_only_by_an_opted_in_worker_after_verification() -> None:
    producer = wire(serializer="pickle", signing_keys=KEYS, signing_key_id="k1")
    body = producer.encode(MSG)
    assert producer.decode(body) == MSG
    # a keyed worker that did not opt in to pickle, and a worker without keys, refuse it
    assert refused(wire(signing_keys=KEYS, signing_key_id="k1"), body).reason == UNDECODABLE
    assert refused(wire(), body).reason == UNDECODABLE
    # an unsigned pickle frame never reaches pickle.loads, whoever receives it
    unsigned = _frame(b"cos\nsystem\n(S'echo pwned'\ntR.", 25, b"-", b"p")
    assert refused(producer, unsigned).reason == BAD_SIGNATURE
    assert refused(wire(), unsigned).reason == UNDECODABLE


def test_peek_shows_a_signed_message_without_its_key_and_never_unpickles() -> None:
    assert peek(wire(signing_keys=KEYS, signing_key_id="k1").encode(MSG)) == MSG
    with pytest.raises(SerializationError):
        peek(wire(serializer="pickle", signing_keys=KEYS, signing_key_id="k1").encode(MSG))


# --- settings ----------------------------------------------------------------------------------


def test_pickle_without_signing_is_refused_saying_why() -> None:
    with pytest.raises(ConfigurationError, match=r"pickle.*signing.*code"):
        App("t", broker="memory://", serializer="pickle")


def test_require_signed_without_keys_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"require_signed.*AIOTASK_SIGNING_KEYS"):
        Settings(require_signed=True)
    assert Settings(require_signed=True, signing_keys={"k": SECRET1}).require_signed


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"signing_keys": KEYS}, "several keys|does not name"),
        ({"signing_keys": KEYS, "signing_key_id": "k3"}, "k3"),
        ({"signing_keys": {"k": "short"}}, "too short"),
        ({"signing_keys": {"a:b": SECRET1}}, "ASCII"),
        ({"signing_key_id": "k1"}, "empty"),
        ({"serializer": "yaml"}, "serializer"),
        ({"compression": "lzma"}, "compression"),
    ],
)
def test_bad_security_settings_fail_when_the_app_is_made(
    settings: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        App("t", broker="memory://", **settings)
    assert SECRET1 not in str(info.value) and SECRET2 not in str(info.value)


def test_signing_keys_from_the_environment_and_a_file(tmp_path: Path) -> None:
    env = {"AIOTASK_SIGNING_KEYS": f"k1:{SECRET1}, k2:{SECRET2}", "AIOTASK_SIGNING_KEY_ID": "k2"}
    conf = Settings.from_env(env)
    assert conf.signing_keys == KEYS and conf.signing_key_id == "k2"
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# rotated 2026-11\nk1:{SECRET1}\nk2:{SECRET2}\n")
    from_file = Settings.from_env({"AIOTASK_SIGNING_KEYS_FILE": str(keyfile)})
    assert from_file.signing_keys == KEYS
    assert Settings.from_env({"AIOTASK_SIGNING_KEYS": "@" + str(keyfile)}).signing_keys == KEYS


def test_a_bad_keys_variable_is_reported_without_quoting_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="AIOTASK_SIGNING_KEYS") as info:
        Settings.from_env({"AIOTASK_SIGNING_KEYS": f"k1:{SECRET1},{SECRET2}"})
    assert SECRET1 not in str(info.value) and SECRET2 not in str(info.value)
    with pytest.raises(ConfigurationError, match="cannot read"):
        Settings.from_env({"AIOTASK_SIGNING_KEYS_FILE": str(tmp_path / "missing")})


def test_settings_repr_masks_the_keys() -> None:
    text = repr(Settings(signing_keys=KEYS, signing_key_id="k1"))
    assert "'k1': '********'" in text and SECRET1 not in text and SECRET2 not in text


async def test_message_too_large_at_send_sends_nothing() -> None:
    app = App("t", broker="memory://", backend=None, max_message_size=2000)

    @app.task(name="t.big")
    async def big(data: str) -> None: ...

    async with app:
        with pytest.raises(MessageTooLarge, match=r"'t\.big'.*over max_message_size"):
            await app.send_task("t.big", args=["x" * 5000])
        assert await app.broker.purge("default") == 0


def test_a_worker_without_the_optional_packages_dead_letters_their_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    msgpack_body = wire(serializer="msgpack").encode(MSG)
    zstd_body = wire(compression="zstd").encode(MSG)
    monkeypatch.setitem(sys.modules, "msgpack", None)  # import msgpack -> ImportError
    monkeypatch.setitem(sys.modules, "zstandard", None)
    e = refused(wire(), msgpack_body)
    assert e.reason == UNDECODABLE and "aiotask[msgpack]" in e.detail
    e = refused(wire(), zstd_body)
    assert e.reason == UNDECODABLE and "aiotask[zstd]" in e.detail
