"""Fewer loop turns on one RabbitMQ round trip: frames handled in the connection's reader
(InlineFrames) and a single publish in the caller's task (_rabbitmq_publish._attempt_one)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aiormq.channel
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from aiotask.brokers import _rabbitmq_publish as publish
from aiotask.brokers._rabbitmq_reader import GETTERS, DirectDeliveries, InlineFrames


class FakeChannel:
    """The parts of aiormq's Channel that DirectDeliveries and InlineFrames use."""

    def __init__(self) -> None:
        self.frames: Any = asyncio.Queue()
        self.consumers: dict[str, object] = {}
        self.publisher_confirms = True
        self.confirmations: dict[int, object] = {}
        self.confirmed: list[tuple[int, object]] = []

    async def _on_deliver_frame(self, frame: spec.Basic.Deliver) -> None:
        raise AssertionError("not called in these tests")

    async def _get_frame(self) -> Any:
        return (await self.frames.get())[1]

    def _confirm_delivery(self, tag: int, frame: object) -> None:
        self.confirmations.pop(tag)
        self.confirmed.append((tag, frame))


class Reader:
    """The channel's reader task: takes every frame off the queue (aiormq's Channel._reader)."""

    def __init__(self, channel: FakeChannel) -> None:
        self.seen: list[Any] = []
        self.task = asyncio.ensure_future(self._run(channel))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])

    async def _run(self, channel: FakeChannel) -> None:
        while True:
            self.seen.append(await channel._get_frame())


def content(body: bytes, split: int = 0) -> list[Any]:
    parts = [body[:split], body[split:]] if split else [body]
    return [ContentHeader(body_size=len(body)), *(ContentBody(p) for p in parts if p)]


async def test_a_delivery_to_an_idle_channel_reader_is_handled_in_the_connection_reader() -> None:
    channel = FakeChannel()
    direct = DirectDeliveries.of(channel)  # type: ignore[arg-type]
    frames = channel.frames
    assert isinstance(frames, InlineFrames)
    got: list[bytes] = []
    direct.register("t1", lambda m: got.append(m.body))
    channel.consumers["t1"] = object()
    reader = Reader(channel)
    await asyncio.sleep(0)  # the reader waits on the empty queue
    for frame in [spec.Basic.Deliver("t1", 1), *content(b"ab", 1)]:
        await frames.put((0, frame))
    assert got == [b"ab"]  # at once, the reader never ran
    for frame in [spec.Basic.Deliver("t1", 2), *content(b"")]:  # no body frame
        frames.put_nowait((0, frame))
    assert got == [b"ab", b""] and reader.seen == []
    # a delivery to another consumer goes through the queue; so does every frame behind it
    # while the reader is busy (the queue is not empty): the channel's order is kept
    other = [spec.Basic.Deliver("aio-pika", 3), *content(b"x")]
    mine = [spec.Basic.Deliver("t1", 4), *content(b"y")]
    for frame in other + mine:
        frames.put_nowait((0, frame))
    assert got == [b"ab", b""]
    await asyncio.sleep(0)
    assert reader.seen == other + mine
    await reader.stop()


async def test_an_unexpected_frame_in_a_delivery_hands_it_all_to_the_queue_in_order() -> None:
    channel = FakeChannel()
    direct = DirectDeliveries.of(channel)  # type: ignore[arg-type]
    direct.register("t1", lambda m: None)
    reader = Reader(channel)
    await asyncio.sleep(0)
    odd = [spec.Basic.Deliver("t1", 1), spec.Basic.Ack(1)]  # no content header
    for frame in odd:
        channel.frames.put_nowait((0, frame))
    await asyncio.sleep(0)
    assert reader.seen == odd
    await reader.stop()


async def test_a_single_confirm_to_an_idle_reader_is_handled_in_the_connection_reader() -> None:
    channel = FakeChannel()
    DirectDeliveries.of(channel)  # type: ignore[arg-type]
    frames = channel.frames
    channel.confirmations.update({1: object(), 2: object(), 3: object()})
    reader = Reader(channel)
    await asyncio.sleep(0)
    ack = spec.Basic.Ack(1)
    frames.put_nowait((0, ack))
    assert channel.confirmed == [(1, ack)]
    queued = [spec.Basic.Ack(3, multiple=True), spec.Basic.Nack(7)]  # many; not a publish
    for frame in queued:
        frames.put_nowait((0, frame))
    channel.publisher_confirms = False
    unwanted = spec.Basic.Ack(2)
    frames.put_nowait((0, unwanted))
    await asyncio.sleep(0)
    assert channel.confirmed == [(1, ack)] and reader.seen == [*queued, unwanted]
    await reader.stop()


def test_the_hooks_inline_frames_uses_still_exist() -> None:
    assert hasattr(asyncio.Queue(), GETTERS)
    channel = aiormq.channel.Channel
    assert callable(channel._confirm_delivery)
    reader = inspect.getsource(channel._reader)
    assert "self._get_frame()" in reader and "self._on_confirm_frame(frame)" in reader
    confirm = inspect.getsource(channel._on_confirm_frame)
    assert "self._confirm_delivery(frame.delivery_tag, frame)" in confirm
    src = inspect.getsource(aiormq.channel.Channel.__init__)
    assert "self.frames" in src and "self.confirmations" in src


# -- one publish in the caller's task ------------------------------------------------------


class FakeRaw:
    """aiormq's channel as _publish_one sees it: basic_publish waits until released."""

    def __init__(self) -> None:
        self.closing: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def _on_deliver_frame(self, frame: object) -> None:
        raise AssertionError("not called in these tests")

    async def basic_publish(self, body: bytes, **kwargs: object) -> None:
        self.tasks.append(asyncio.current_task())
        await self.release.wait()


class FakeRobust:
    is_closed = False

    def __init__(self, raw: FakeRaw) -> None:
        self.raw = raw

    async def get_underlay_channel(self) -> FakeRaw:
        return self.raw


def one() -> dict[int, tuple[str, publish.Outbound]]:
    return {0: ("q", publish.message(b"x", "id-1", 0, {}))}


async def test_a_single_publish_runs_in_the_callers_task() -> None:
    raw = FakeRaw()
    raw.release.set()
    out = await publish._attempt(FakeRobust(raw), one(), 5.0)  # type: ignore[arg-type]
    assert out == {0: None} and raw.tasks == [asyncio.current_task()]


async def test_a_single_publish_whose_channel_closes_fails_alone_not_its_caller() -> None:
    raw = FakeRaw()

    async def caller() -> tuple[dict[int, BaseException | None], int]:
        out = await publish._attempt(FakeRobust(raw), one(), 5.0)  # type: ignore[arg-type]
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # no cancel left over for the caller's next await
        return out, task.cancelling()

    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0.01)
    raw.closing.set_result(None)
    out, cancelling = await task
    assert isinstance(out[0], asyncio.CancelledError) and cancelling == 0
    raw.closing = asyncio.get_running_loop().create_future()  # a caller cancelled: it raises
    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()


async def test_a_single_publish_without_a_confirm_in_time_is_a_timeout() -> None:
    out = await publish._attempt(FakeRobust(FakeRaw()), one(), 0.02)  # type: ignore[arg-type]
    assert isinstance(out[0], TimeoutError) and "broker_unreachable_timeout" in str(out[0])
