from __future__ import annotations

import uuid
from collections import Counter

import orjson
import pytest

from aiotask.exceptions import ProtocolError, SerializationError
from aiotask.protocol import Message, decode, encode, new_id, preview


def test_round_trip_keeps_every_field() -> None:
    m = Message(
        id="a",
        task="p.add",
        args=[1, "x"],
        kwargs={"k": [1]},
        queue="q",
        priority=7,
        eta=1.5,
        expires=9.0,
        retries=2,
        root_id="r",
        parent_id="p",
        group_id="g",
        group_index=3,
        group_size=4,
        chain=[{"task": "n"}],
        links=[{"t": 1}],
        errbacks=[{"t": 2}],
        chord={"id": "c"},
        headers={"h": "v"},
        ignore_result=True,
    )
    assert decode(encode(m)) == m


def test_defaults_are_omitted_on_the_wire() -> None:
    data = orjson.loads(encode(Message(id="a", task="t")))
    assert data == {"v": 1, "id": "a", "task": "t"}


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\xff garbage",
        b"[1, 2]",
        b'{"v": 2, "id": "a", "task": "t"}',
        b'{"v": 1, "task": "t"}',
        b'{"v": 1, "id": "a", "task": "t", "args": "notalist"}',
        b'{"v": 1, "id": "a", "task": "t", "retries": true}',
        # the shape send() makes (v, id, task, root_id, args) takes a short path: still checked
        b'{"v": 1, "id": "a", "task": "t", "root_id": "a", "args": "notalist"}',
        b'{"v": 1, "id": "a", "task": "t", "root_id": "a", "retries": true}',
        b'{"v": 1, "id": "a", "task": "t", "root_id": 5}',
        b'{"v": 1, "id": "a", "task": "t", "root_id": "a", "headers": {"h": 1}}',
    ],
)
def test_bad_bodies_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    m = decode(b'{"v": 1, "id": "a", "task": "t", "future_field": 1}')
    assert m.task == "t"


def test_unencodable_payload_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match=r"p\.add"):
        encode(Message(id="a", task="p.add", args=[object()]))


def test_preview_truncates() -> None:
    assert preview(b"x" * 500).endswith("...")
    assert len(preview(b"x" * 500)) < 140


def test_new_ids_are_version_4_uuids_in_their_text_form() -> None:
    """What str(uuid.uuid4()) gives: the same text form, version 4, RFC variant, every other
    hex digit random (each takes all 16 values over many ids; the variant digit 4 of them)."""
    ids = [new_id() for _ in range(4000)]
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i
        assert u.version == 4
        assert u.variant == uuid.RFC_4122
    digits = [Counter(i[p] for i in ids) for p in range(36)]
    for p, seen in enumerate(digits):
        if p in (8, 13, 18, 23):
            assert set(seen) == {"-"}
        elif p == 14:
            assert set(seen) == {"4"}
        elif p == 19:
            assert set(seen) == set("89ab")
        else:
            assert set(seen) == set("0123456789abcdef"), p


@pytest.mark.parametrize(
    "data",
    [
        {"root_id": "r"},
        {"root_id": "r", "args": [1, {"x": 2}]},
        {"root_id": None},
        {"root_id": "r", "kwargs": {"k": 1}},
        {"root_id": "r", "future_field": [1]},
        {"root_id": "r", "args": [1], "retries": 2},
    ],
)
def test_a_sent_shape_decodes_to_the_same_message(data: dict[str, object]) -> None:
    body = orjson.dumps({"v": 1, "id": "a", "task": "t", **data})
    known = {k: v for k, v in data.items() if k != "future_field" and v is not None}
    assert decode(body) == Message("a", "t", **known)  # type: ignore[arg-type]
