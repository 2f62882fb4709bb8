"""aiotask's RabbitMQ read path: a buffered AMQP frame reader and direct deliveries.

aiormq's `FrameReceiver` reads each frame with three `readexactly` calls (1 byte, 6 bytes, the
payload and end byte) into a BytesIO under a lock: a delivery is three frames, so nine reads
and a dozen coroutine steps before pamqp sees a byte. `BufferedFrames` reads whatever the
socket holds (up to `CHUNK`) into one buffer and cuts the frames out of it; pamqp still does
every decoding step (`frame_parts` for a frame's length, `unmarshal` for the frame).

The hooks:
- aiotask's connections pass `Transport` as aiormq's public `transport_factory` (aio-pika hands
  its connection's `kwargs` to `aiormq.connect`; `RobustTransport` adds it there). It opens the
  socket with aiormq's own TCP/TLS factory and marks the stream reader as aiotask's.
- aiormq builds its receiver as `FrameReceiver(reader)` in `Connection.connect`, through the
  module global, so `install()` points that name at `BufferedFrames`, a subclass that is
  aiormq's own receiver for every reader not marked (other aio-pika users in the process).
  A unit test fails if aiormq stops building the receiver that way.

`DirectDeliveries` then hands each delivery to aiotask's consumer callback in the channel's
reader instead of in a new task (see its docstring), and `InlineFrames` in the connection's
reader when the channel's reader is idle (one loop turn fewer per delivery and per confirm).
Instructions per drained no-op task: 0.74x aiormq's path (docs/benchmarks.md, "Reading
frames").
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any, cast

import aiormq.connection
from aio_pika import RobustConnection
from aiormq.abc import DeliveredMessage
from aiormq.connection import FrameReceiver, TCPTransportFactory, TLSTransportFactory
from aiormq.connection import TransportFactory as _TransportFactory
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.frame import frame_parts, unmarshal
from pamqp.header import ContentHeader

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiormq.abc import AbstractChannel
    from aiormq.channel import Channel
    from aiormq.connection import ReceivedFrame
    from yarl import URL

log = logging.getLogger("aiotask.brokers.rabbitmq")

#: read at most this much per socket read (asyncio's stream buffer pauses the socket at 128 KiB)
CHUNK = 256 * 1024
#: off: aiotask's connections read with aiormq's stock receiver (benchmarks compare the two)
ENABLED = True
#: off: aiotask's consumers are called in a task per delivery, as aiormq does (benchmarks)
DIRECT = True
#: off: every frame goes through the channel's queue and reader task, as in aiormq (benchmarks)
INLINE = True
#: asyncio.Queue's deque of waiting get() futures (InlineFrames tells an idle reader by it)
GETTERS = "_getters"
#: the attribute of aiormq.connection that Connection.connect builds its receiver from
HOOK = "FrameReceiver"
#: the method of aiormq's Channel that its reader calls with a Basic.Deliver frame
HOOK_DELIVER = "_on_deliver_frame"

_ours: weakref.WeakSet[asyncio.StreamReader] = weakref.WeakSet()


class Transport(_TransportFactory):
    """aiormq's TCP or TLS transport, its reader marked for `BufferedFrames`."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        base = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await base.create(url, **kwargs)
        if ENABLED:
            _ours.add(reader)
        return reader, writer


class BufferedFrames(FrameReceiver):
    """aiormq's receiver; for a marked reader, frames are cut out of one read buffer."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.buffered = reader in _ours
        self._buf = b""
        self._pos = 0

    async def get_frame(self) -> ReceivedFrame:
        if not self.buffered:
            return await super().get_frame()
        frame = self.next_frame()  # no await while a whole frame is buffered
        if frame is None:
            frame = await self._read()
        return frame

    async def __anext__(self) -> ReceivedFrame:
        return await self.get_frame()

    def next_frame(self) -> ReceivedFrame | None:
        """The next whole frame in the buffer, decoded by pamqp; None when it is not all in."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 8:  # a frame is at least its 7-byte header and its end byte
            return None
        if not self.started:
            if buf.startswith(b"AMQP", pos):  # the server refused our protocol version
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        size = frame_parts(buf[pos : pos + 7])[2]
        if size is None:
            raise InvalidFrameError("No frame length")
        end = pos + 8 + size
        if end > len(buf):
            return None
        try:
            frame = unmarshal(buf[pos:end])
        except PAMQPException as e:
            raise InvalidFrameError(str(e)) from e
        self._pos = end
        return frame

    async def _read(self) -> ReceivedFrame:
        """Read until a whole frame is buffered (errors mapped as aiormq's receiver maps them)."""
        async with self.lock:
            while (frame := self.next_frame()) is None:
                held = len(self._buf) - self._pos
                if not held and self.reader.at_eof():
                    raise StopAsyncIteration
                chunk = await self._chunk()
                if not chunk:
                    raise AMQPConnectionError(
                        f"Server connection unexpectedly closed. Read {held} bytes "
                        "of an incomplete frame"
                    )
                self._buf = self._buf[self._pos :] + chunk if held else chunk
                self._pos = 0
            return frame

    async def _chunk(self) -> bytes:
        try:
            return await self.reader.read(CHUNK)
        except ConnectionRefusedError as e:
            raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
        except ConnectionResetError as e:
            raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
        except ConnectionError as e:
            raise AMQPConnectionError(f"Server connection error: {e!r}") from e
        except OSError as e:
            raise AMQPConnectionError(f"Server communication error: {e!r}") from e


class RobustTransport(RobustConnection):
    """aio-pika's robust connection, its aiormq connections made through `Transport`."""

    def __init__(self, url: URL, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.kwargs["transport_factory"] = Transport()


def install() -> None:
    """Point aiormq's receiver name at `BufferedFrames` (idempotent)."""
    if getattr(aiormq.connection, HOOK) is not BufferedFrames:
        setattr(aiormq.connection, HOOK, BufferedFrames)


class DirectDeliveries:
    """Deliveries to aiotask's consumers on one aiormq channel, called in the channel's reader.

    aiormq's `Channel._on_deliver_frame` reads a delivery's header and body frames (into a
    BytesIO), then starts a task per delivery to run the consumer callback. aiotask's callbacks
    are plain functions that only buffer the delivery, so this replaces that method on the one
    channel instance (an instance attribute: the class and other channels are untouched),
    takes the header and body frames off the channel's frame queue (`_get_frame`) and calls
    the callback at once. A consumer tag not registered here goes to aiormq's own method. The
    channel reader calls the method by its name `HOOK_DELIVER`; a unit test fails if aiormq
    renames it or `_get_frame`.
    """

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = cast("Channel", channel)
        self.callbacks: dict[str, Callable[[DeliveredMessage], None]] = {}
        self._stock = getattr(channel, HOOK_DELIVER)
        setattr(channel, HOOK_DELIVER, self._on_deliver_frame)
        frames = getattr(channel, "frames", None)
        if INLINE and isinstance(frames, asyncio.Queue):
            channel.frames = InlineFrames(self, frames)  # type: ignore[assignment]

    @classmethod
    def of(cls, channel: AbstractChannel) -> DirectDeliveries:
        """The channel's instance, made on first use."""
        direct = getattr(channel, HOOK_DELIVER, None)
        owner = getattr(direct, "__self__", None)
        return owner if isinstance(owner, cls) else cls(channel)

    def register(self, tag: str, callback: Callable[[DeliveredMessage], None]) -> None:
        """Call `callback` for deliveries to consumer `tag` (register before basic_consume)."""
        live = self.channel.consumers
        for gone in [t for t in self.callbacks if t not in live]:  # cancelled consumers
            del self.callbacks[gone]
        self.callbacks[tag] = callback

    async def _body(self, size: int) -> bytes:
        """The body frames that follow a content header (one, unless over frame_max)."""
        parts: list[bytes] = []
        got = 0
        while got < size:
            part = await self.channel._get_frame()
            if not isinstance(part, ContentBody):
                raise ValueError(f"Unexpected frame {part!r} instead of ContentBody", part)
            parts.append(part.value)
            got += len(part.value)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _on_deliver_frame(self, frame: Basic.Deliver) -> None:
        tag = frame.consumer_tag or ""
        if tag not in self.callbacks:
            await self._stock(frame)
            return
        header = await self.channel._get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"Unexpected frame {header!r} instead of ContentHeader", header)
        self.deliver(frame, header, await self._body(header.body_size))

    def deliver(self, frame: Basic.Deliver, header: ContentHeader, body: bytes) -> None:
        """Call the consumer of `frame` (dropped when it was cancelled, as aiormq drops it)."""
        tag = frame.consumer_tag or ""
        channel = self.channel
        callback = self.callbacks.get(tag)
        if callback is None:
            return
        if tag not in channel.consumers:  # cancelled (aiormq drops those deliveries too)
            self.callbacks.pop(tag, None)
            return
        message = DeliveredMessage(delivery=frame, header=header, body=body, channel=channel)
        try:
            callback(message)
        except Exception:
            log.exception("Consumer callback failed")


class InlineFrames:
    """A channel's frame queue that handles a delivery or a confirm in the connection's reader.

    aiormq's connection reader puts each frame on its channel's queue, and the channel's
    reader task takes it off in a later turn of the loop: one more hop, on the worker between
    the socket read and the task, on the producer between the confirm and send() returning.
    When the channel's reader is idle (waiting on the empty queue: every earlier frame is
    handled), this handles the frames it would handle next the same way, at once:
    a `Basic.Deliver` to an aiotask consumer (with its header and body frames, which follow it
    on the channel) goes to `DirectDeliveries.deliver`; a single `Basic.Ack` or `Basic.Nack` of
    a publish goes to aiormq's own `Channel._confirm_delivery`, the method its reader calls.
    Every other frame, and every frame while the reader is busy, is queued as before, so the
    order of the channel's frames is kept. Under load (the reader busy, acks with multiple)
    nothing changes.
    """

    def __init__(self, direct: DirectDeliveries, queue: asyncio.Queue[Any]) -> None:
        self.direct = direct
        self.queue = queue
        self._getters: Any = getattr(queue, GETTERS, None)  # asyncio.Queue's waiting get()s
        #: aiormq's handler of a publish confirm (None in an aiormq without it: all queued)
        self._confirm: Any = getattr(direct.channel, "_confirm_delivery", None)
        #: the queued items of a delivery being put together: deliver, header, bodies
        self._held: list[tuple[Any, Any]] = []
        self._size = 0
        self._got = 0

    def __getattr__(self, name: str) -> Any:  # get, task_done, qsize...: the queue's own
        return getattr(self.queue, name)

    async def put(self, item: tuple[Any, Any]) -> None:
        if not self._take(item):
            await self.queue.put(item)

    def put_nowait(self, item: tuple[Any, Any]) -> None:
        if not self._take(item):
            self.queue.put_nowait(item)

    def _idle(self) -> bool:
        """The channel's reader waits on the empty queue: it has handled every earlier frame."""
        getters = self._getters
        return bool(getters) and self.queue.empty() and any(not g.done() for g in getters)

    def _take(self, item: tuple[Any, Any]) -> bool:
        frame = item[1]
        if self._held:
            return self._content(item)
        if isinstance(frame, (Basic.Ack, Basic.Nack)):
            channel = self.direct.channel
            if (
                frame.multiple
                or self._confirm is None
                or not channel.publisher_confirms
                or frame.delivery_tag not in channel.confirmations
                or not self._idle()
            ):
                return False
            self._confirm(frame.delivery_tag, frame)
            return True
        if (
            isinstance(frame, Basic.Deliver)
            and (frame.consumer_tag or "") in self.direct.callbacks
            and self._idle()
        ):
            self._held = [item]
            return True
        return False

    def _content(self, item: tuple[Any, Any]) -> bool:
        """The next frame of the held delivery; anything else hands it all to the queue."""
        frame = item[1]
        self._held.append(item)
        if len(self._held) == 2 and isinstance(frame, ContentHeader):
            self._size, self._got = frame.body_size, 0
        elif len(self._held) > 2 and isinstance(frame, ContentBody):
            self._got += len(frame.value)
        else:  # not what AMQP sends: aiormq's reader raises on it, in order
            held, self._held = self._held, []
            for queued in held:
                self.queue.put_nowait(queued)
            return True
        if self._got >= self._size:
            held, self._held = self._held, []
            bodies = [f.value for _, f in held[2:]]
            body = bodies[0] if len(bodies) == 1 else b"".join(bodies)
            self.direct.deliver(held[0][1], held[1][1], body)
        return True
