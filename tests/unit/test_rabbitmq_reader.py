"""The buffered AMQP frame reader and direct deliveries (_rabbitmq_reader), without a server.

Frames are made by pamqp and read back through `BufferedFrames` in every split: all in one
read, one byte per read, random cuts; the results must equal aiormq's own receiver's. The
library hooks are checked too: each test named `test_..._hook...` fails if aiormq or aio-pika
changes the thing aiotask overrides.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
from typing import TYPE_CHECKING, Any

import aio_pika.connection
import aiormq.channel
import aiormq.connection
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.frame import marshal
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from yarl import URL

from aiotask.brokers import _rabbitmq_reader as reader
from aiotask.brokers._rabbitmq_reader import (
    HOOK,
    HOOK_DELIVER,
    BufferedFrames,
    DirectDeliveries,
    RobustTransport,
    Transport,
)

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage


class ChunkReader:
    """A stream reader that hands out the given chunks, one per read, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    def at_eof(self) -> bool:
        return not self.chunks

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        await asyncio.sleep(0)
        return self.chunks.pop(0) if self.chunks else b""


def frames() -> list[tuple[int, Any]]:
    """A consume-side stream: deliveries (one with a body over two frames), a heartbeat."""
    out: list[tuple[int, Any]] = [(0, spec.Connection.Blocked(reason="low memory"))]
    for tag in range(1, 6):
        body = b"x" * (tag * 300)
        out.append((2, spec.Basic.Deliver("ctag", tag, False, "", "q")))
        props = spec.Basic.Properties(message_id=f"m{tag}", headers={"a": tag}, priority=tag % 3)
        out.append((2, ContentHeader(body_size=len(body), properties=props)))
        if tag == 3:
            out += [(2, ContentBody(body[:100])), (2, ContentBody(body[100:]))]
        else:
            out.append((2, ContentBody(body)))
        out.append((0, Heartbeat()))
    out.append((3, spec.Basic.Ack(delivery_tag=7, multiple=True)))
    return out


def wire() -> bytes:
    return b"".join(marshal(frame, channel) for channel, frame in frames())


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


async def read_all(receiver: Any) -> list[tuple[int, int, Any]]:
    out = []
    while True:
        try:
            out.append(await receiver.get_frame())
        except StopAsyncIteration:
            return out


def buffered(chunks: list[bytes]) -> BufferedFrames:
    source = ChunkReader(chunks)
    reader._ours.add(source)  # type: ignore[arg-type]  # as Transport marks its readers
    receiver = BufferedFrames(source)  # type: ignore[arg-type]
    assert receiver.buffered
    return receiver


def fields(frame: Any) -> str:
    """A frame's field values, its properties' too (pamqp frames compare by identity)."""
    values = dict(vars(frame))
    props = values.pop("properties", None)
    return repr((values, vars(props) if props is not None else None))


def described(received: list[tuple[int, int, Any]]) -> list[tuple[int, int, str, str]]:
    """Each frame as its weight (bytes), channel, class and field values."""
    return [(w, ch, type(f).__name__, fields(f)) for w, ch, f in received]


async def test_the_stock_receiver_class_is_aiormqs() -> None:
    # the reference the tests compare with: aiormq's receiver, whether or not install() ran
    assert BufferedFrames.__mro__[1].__module__ == "aiormq.connection"
    assert BufferedFrames.__mro__[1].__name__ == "FrameReceiver"


async def test_many_frames_in_one_read_decode_as_aiormqs_receiver_does() -> None:
    data = wire()
    receiver = buffered([data])
    got = await read_all(receiver)
    want = await read_all(BufferedFrames.__mro__[1](_stream(data)))
    assert len(got) == len(frames())
    assert described(got) == described(want)
    assert receiver.reader.reads == 1  # type: ignore[attr-defined]  # one read for them all


async def test_frames_split_across_reads_decode_the_same() -> None:
    data = wire()
    want = described(await read_all(buffered([data])))
    one_byte = [data[i : i + 1] for i in range(len(data))]
    assert described(await read_all(buffered(one_byte))) == want
    rnd = random.Random(19)
    for _ in range(20):
        points = [rnd.randrange(1, len(data)) for _ in range(rnd.randrange(1, 40))]
        assert described(await read_all(buffered(cuts(data, points)))) == want


async def test_decoded_delivery_fields() -> None:
    got = await read_all(buffered([wire()]))
    deliver, header, body = (f for _, _, f in got[1:4])
    assert isinstance(deliver, spec.Basic.Deliver) and deliver.delivery_tag == 1
    assert isinstance(header, ContentHeader) and header.properties.message_id == "m1"
    assert header.properties.headers == {"a": 1} and header.body_size == 300
    assert isinstance(body, ContentBody) and body.value == b"x" * 300
    assert [ch for _, ch, _ in got[:2]] == [0, 2]


async def test_eof_inside_a_frame_is_a_connection_error() -> None:
    data = wire()
    receiver = buffered([data[:-3]])
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await read_all(receiver)


async def test_a_bad_end_byte_is_an_invalid_frame() -> None:
    data = bytearray(marshal(spec.Basic.Ack(delivery_tag=1), 1))
    data[-1] = 0
    with pytest.raises(InvalidFrameError):
        await buffered([bytes(data)]).get_frame()


async def test_a_protocol_header_reply_is_refused_as_aiormq_does() -> None:
    # RabbitMQ answers an unsupported protocol version with its own protocol header.
    with pytest.raises(ProtocolSyntaxError):
        await buffered([b"AMQP\x00\x00\x09\x01"]).get_frame()


async def test_a_reader_not_marked_uses_aiormqs_receiver() -> None:
    data = wire()
    receiver = BufferedFrames(_stream(data))
    assert not receiver.buffered
    got = await read_all(receiver)
    assert described(got) == described(await read_all(buffered([data])))


async def test_async_iteration_as_aiormqs_reader_loop_does() -> None:
    got = [frame async for frame in buffered(cuts(wire(), [5, 9, 700]))]
    assert len(got) == len(frames())


def _stream(data: bytes) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return stream


# -- the library hooks ---------------------------------------------------------------------


async def test_the_receiver_hook_still_exists_in_aiormq() -> None:
    # aiormq builds its receiver through the module global that install() replaces.
    reader.install()
    assert getattr(aiormq.connection, HOOK) is BufferedFrames
    source = inspect.getsource(aiormq.connection.Connection.connect)
    assert f"{HOOK}(reader)" in source
    assert "async for weight, channel, frame in frame_receiver" in inspect.getsource(
        aiormq.connection.Connection._Connection__reader  # type: ignore[attr-defined]
    )
    base = BufferedFrames.__mro__[1]
    assert {"get_frame", "__anext__", "lock", "started"} <= {*vars(base), *vars(base(_stream(b"")))}
    reader.install()  # idempotent
    assert getattr(aiormq.connection, HOOK) is BufferedFrames


async def test_the_transport_factory_hook_still_exists() -> None:
    # aio-pika hands its connection's kwargs to aiormq.connect; aiormq takes transport_factory.
    assert "**self.kwargs" in inspect.getsource(aio_pika.connection.Connection.connect)
    params = inspect.signature(aiormq.connection.Connection.__init__).parameters
    assert "transport_factory" in params
    conn = RobustTransport(URL("amqp://guest:guest@h1:5672/"))
    assert isinstance(conn.kwargs["transport_factory"], Transport)


def test_the_deliver_hook_still_exists_in_aiormq() -> None:
    channel = aiormq.channel.Channel
    assert f"self.{HOOK_DELIVER}(frame)" in inspect.getsource(channel._reader)
    for name in (HOOK_DELIVER, "_get_frame"):
        assert callable(getattr(channel, name))
    assert "consumer_tag" in inspect.signature(channel.basic_consume).parameters
    # aiormq registers the consumer under the tag before the server can deliver to it
    src = inspect.getsource(channel.basic_consume)
    assert src.index("self.consumers[consumer_tag]") < src.index("await self.rpc(")


# -- direct deliveries ---------------------------------------------------------------------


class FakeChannel:
    """The parts of aiormq's Channel that DirectDeliveries uses."""

    def __init__(self, queued: list[Any]) -> None:
        self.queued = queued
        self.consumers: dict[str, object] = {}
        self.stock: list[object] = []

    async def _on_deliver_frame(self, frame: spec.Basic.Deliver) -> None:
        self.stock.append(frame)

    async def _get_frame(self) -> Any:
        return self.queued.pop(0)


def content(body: bytes, split: int = 0) -> list[Any]:
    parts = [body[:split], body[split:]] if split else [body]
    return [ContentHeader(body_size=len(body)), *(ContentBody(p) for p in parts if p)]


async def test_direct_deliveries_call_registered_consumers_in_the_reader() -> None:
    channel = FakeChannel(content(b"one") + content(b"gone") + content(b"") + content(b"ab", 1))
    direct = DirectDeliveries.of(channel)  # type: ignore[arg-type]
    assert DirectDeliveries.of(channel) is direct  # type: ignore[arg-type]
    got: list[bytes] = []
    direct.register("t1", lambda m: got.append(m.body))
    channel.consumers["t1"] = object()
    await getattr(channel, HOOK_DELIVER)(spec.Basic.Deliver("t1", 1))
    assert got == [b"one"] and channel.stock == []
    other = spec.Basic.Deliver("aio-pika-tag", 2)
    await getattr(channel, HOOK_DELIVER)(other)  # not ours: aiormq's method
    assert channel.stock == [other]
    del channel.consumers["t1"]  # cancelled: the delivery is dropped, as aiormq drops it
    await getattr(channel, HOOK_DELIVER)(spec.Basic.Deliver("t1", 3))
    assert got == [b"one"] and "t1" not in direct.callbacks
    direct.register("t2", lambda m: got.append(m.body))
    channel.consumers["t2"] = object()
    await getattr(channel, HOOK_DELIVER)(spec.Basic.Deliver("t2", 4))  # no body frame
    await getattr(channel, HOOK_DELIVER)(spec.Basic.Deliver("t2", 5))  # two body frames
    assert got == [b"one", b"", b"ab"]
    assert not channel.queued  # every header and body was read off the channel


async def test_a_failing_consumer_is_logged_and_the_reader_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = FakeChannel(content(b"x"))
    direct = DirectDeliveries.of(channel)  # type: ignore[arg-type]

    def boom(_: DeliveredMessage) -> None:
        raise RuntimeError("boom")

    direct.register("t", boom)
    channel.consumers["t"] = object()
    with caplog.at_level(logging.ERROR, logger="aiotask.brokers.rabbitmq"):
        await getattr(channel, HOOK_DELIVER)(spec.Basic.Deliver("t", 1))
    assert "Consumer callback failed" in caplog.text


def test_registering_drops_the_callbacks_of_cancelled_consumers() -> None:
    channel = FakeChannel([])
    direct = DirectDeliveries.of(channel)  # type: ignore[arg-type]
    direct.register("a", print)
    direct.register("b", print)  # "a" never reached channel.consumers: dropped
    channel.consumers["b"] = object()
    direct.register("c", print)
    assert set(direct.callbacks) == {"b", "c"}
