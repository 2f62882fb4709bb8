"""Events without a server: the wire form, the batched emitter, and a worker on memory://."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson
import pytest

from aiotask import App
from aiotask.brokers.base import EventStream
from aiotask.brokers.memory import MemoryBroker
from aiotask.events import EventType, TaskEvent, WorkerEvent, as_dict, decode, encode, follow
from aiotask.events.emitter import Emitter
from aiotask.events.model import MAX_MESSAGE, decode_record, safe_message
from aiotask.exceptions import Reject
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from contextlib import AbstractAsyncContextManager


def test_task_event_round_trip_leaves_out_what_does_not_apply() -> None:
    event = TaskEvent(EventType.TASK_SUCCEEDED, 1.5, "w1", "id-1", "proj.add", "default", 0.25, 0)
    data = as_dict(event)
    assert data == {
        "type": "task-succeeded",
        "timestamp": 1.5,
        "hostname": "w1",
        "task_id": "id-1",
        "task": "proj.add",
        "queue": "default",
        "runtime": 0.25,
        "retries": 0,
    }
    assert decode(encode(event)) == event


def test_worker_event_round_trip() -> None:
    event = WorkerEvent(EventType.WORKER_HEARTBEAT, 2.0, "w1", 42, ("a", "b"), 3, 10, 2.0)
    assert orjson.loads(encode(event))["queues"] == ["a", "b"]
    assert decode(encode(event)) == event


def test_decode_ignores_unknown_keys_and_refuses_what_is_not_an_event() -> None:
    raw = b'{"type":"task-sent","timestamp":1,"hostname":"h","task_id":"i","task":"t",'
    raw += b'"queue":"q","new_key":1}'
    assert decode(raw) == TaskEvent(EventType.TASK_SENT, 1, "h", "i", "t", "q")
    for bad in (b"not json", b"[1]", b'{"type":"task-exploded"}', b'{"type":"task-sent"}'):
        with pytest.raises(ValueError):
            decode(bad)


def test_a_record_is_an_array_of_events_and_skips_what_is_not_one() -> None:
    ok = TaskEvent(EventType.TASK_SENT, 1.0, "h", "i", "t", "q")
    raw = b'[{"type":"task-sent","timestamp":1.0,"hostname":"h","task_id":"i","task":"t",'
    raw += b'"queue":"q"},{"type":"task-from-the-future"},7]'
    assert decode_record(raw) == ([ok], 2)
    assert decode_record(encode(ok)) == ([ok], 0)  # a single object is one event
    with pytest.raises(ValueError):
        decode_record(b"not json")


def test_exception_messages_are_redacted_and_cut() -> None:
    assert safe_message(ValueError("redis://u:hunter2@h:6379/0 down")) == (
        "redis://u:***@h:6379/0 down"
    )
    long = safe_message("x" * 5000)
    assert len(long) == MAX_MESSAGE
    assert long.endswith("…")


class Recorder:
    """An EventStream that keeps each emit_events call (what the emitter sends, per call)."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.failing = False

    async def emit_events(self, batch: Sequence[bytes]) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.calls.append(list(batch))

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        raise NotImplementedError


async def test_emitter_flushes_in_one_call_one_record_per_batch() -> None:
    stream = Recorder()
    assert isinstance(stream, EventStream)
    emitter = Emitter(lambda: stream, "w1", max_batch=3)
    for i in range(7):
        emitter.task(EventType.TASK_RECEIVED, f"id-{i}", "t", "q", extra={"retries": 2})
    assert stream.calls == []  # recording does no I/O
    assert await emitter.flush() == 7
    [records] = stream.calls  # one broker call
    decoded = [decode_record(r)[0] for r in records]
    assert [len(events) for events in decoded] == [3, 3, 1]
    ids = [e.task_id for events in decoded for e in events if isinstance(e, TaskEvent)]
    assert ids == [f"id-{i}" for i in range(7)]
    first = decoded[0][0]
    assert isinstance(first, TaskEvent)
    assert (first.type, first.task_id, first.hostname, first.retries) == (
        EventType.TASK_RECEIVED,
        "id-0",
        "w1",
        2,
    )


async def test_emitter_drops_past_its_buffer_and_survives_a_broker_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = Recorder()
    emitter = Emitter(lambda: stream, "w1", max_buffer=5)
    stream.failing = True
    for i in range(8):
        emitter.task(EventType.TASK_STARTED, f"id-{i}", "t", "q")
    assert (emitter.pending, emitter.dropped) == (5, 3)
    with caplog.at_level(logging.WARNING):
        assert await emitter.flush() == 0  # dropped with a warning, never raised
    assert "could not emit 5 events" in caplog.text
    assert emitter.buffer == []
    stream.failing = False
    emitter.task(EventType.TASK_STARTED, "id-9", "t", "q")
    assert await emitter.flush() == 1
    assert len(stream.calls) == 1
    assert emitter.dropped == 0  # the drop count was reported (logged) and reset


async def test_emitter_records_a_received_batch_in_one_call_within_its_buffer() -> None:
    stream = Recorder()
    emitter = Emitter(lambda: stream, "w1", max_batch=3, max_buffer=5)
    emitter.task(EventType.TASK_STARTED, "first", "t", "q")
    items = [(f"id-{i}", "t", "q", {"retries": 1} if i == 0 else None) for i in range(6)]
    emitter.tasks(EventType.TASK_RECEIVED, items)
    assert (emitter.pending, emitter.dropped) == (5, 2)  # the rest is dropped and counted
    assert emitter._full.is_set()  # a full batch is waiting: flushed at once
    assert await emitter.flush() == 5
    [records] = stream.calls
    got = [e for r in records for e in decode_record(r)[0] if isinstance(e, TaskEvent)]
    assert [(e.type, e.task_id) for e in got] == [
        (EventType.TASK_STARTED, "first"),
        *((EventType.TASK_RECEIVED, f"id-{i}") for i in range(4)),
    ]
    assert (got[1].retries, got[2].retries) == (1, None)
    assert got[1].timestamp == got[4].timestamp  # one instant for the batch


async def test_emitter_carries_started_and_succeeded_of_one_task_in_one_entry() -> None:
    stream = Recorder()
    emitter = Emitter(lambda: stream, "w1")
    emitter.task(EventType.TASK_STARTED, "a", "t", "q")
    emitter.succeeded("a", "t", "q", 0.5)  # nothing in between: one entry
    emitter.task(EventType.TASK_STARTED, "b", "t", "q")
    emitter.task(EventType.TASK_STARTED, "c", "t", "q")
    emitter.succeeded("b", "t", "q", 0.25)  # c started in between: an entry of its own
    assert (len(emitter.buffer), emitter.pending) == (4, 5)
    assert await emitter.flush() == 5
    [[record]] = stream.calls
    assert len(orjson.loads(record)["events"][0]) == 8
    got = [e for e in decode_record(record)[0] if isinstance(e, TaskEvent)]
    assert [(e.type, e.task_id) for e in got] == [
        (EventType.TASK_STARTED, "a"),
        (EventType.TASK_SUCCEEDED, "a"),
        (EventType.TASK_STARTED, "b"),
        (EventType.TASK_STARTED, "c"),
        (EventType.TASK_SUCCEEDED, "b"),
    ]
    started, done = got[0], got[1]
    assert (started.runtime, done.runtime, done.hostname) == (None, 0.5, "w1")
    assert started.timestamp <= done.timestamp
    assert (started.task, started.queue) == ("t", "q")


async def test_emitter_cuts_records_at_max_batch_events_not_entries() -> None:
    stream = Recorder()
    emitter = Emitter(lambda: stream, "w1", max_batch=4)
    emitter.tasks(EventType.TASK_RECEIVED, [(f"r{i}", "t", "q", None) for i in range(3)])
    emitter.task(EventType.TASK_STARTED, "r0", "t", "q")
    emitter.succeeded("r0", "t", "q", 0.1)  # 2 events: the record would hold 5
    emitter.tasks(EventType.TASK_RECEIVED, [(f"s{i}", "t", "q", None) for i in range(9)])
    emitter.tasks(EventType.TASK_RECEIVED, [])  # nothing recorded
    assert (len(emitter.buffer), emitter.pending) == (5, 14)
    assert await emitter.flush() == 14
    [records] = stream.calls
    decoded = [decode_record(r) for r in records]
    assert [len(events) for events, _skipped in decoded] == [3, 2, 4, 4, 1]
    assert all(skipped == 0 for _events, skipped in decoded)
    assert [e.task_id for events, _ in decoded for e in events if isinstance(e, TaskEvent)] == [
        "r0",
        "r1",
        "r2",
        "r0",
        "r0",
        *(f"s{i}" for i in range(9)),
    ]


def test_a_compact_entry_of_the_wrong_shape_is_skipped() -> None:
    raw = orjson.dumps(
        {"hostname": "h", "events": [["task-received", 1.0, [["i", "t", "q", None], [1]]], [1, 2]]}
    )
    events, skipped = decode_record(raw)
    assert [(e.type, e.hostname) for e in events] == [(EventType.TASK_RECEIVED, "h")]
    assert skipped == 2


async def test_emitter_run_flushes_on_its_own_and_beats() -> None:
    stream = Recorder()
    emitter = Emitter(lambda: stream, "w1", interval=0.01)
    runner = asyncio.create_task(emitter.run((0.02, lambda: {"pid": 1, "active": 0})))
    emitter.task(EventType.TASK_STARTED, "id-1", "t", "q")
    try:
        async with asyncio.timeout(5):
            while not any(b"worker-heartbeat" in e for call in stream.calls for e in call):
                await asyncio.sleep(0.01)
    finally:
        runner.cancel()
    sent = [e for call in stream.calls for r in call for e in decode_record(r)[0]]
    assert sent[0].type == EventType.TASK_STARTED
    beat = next(e for e in sent if e.type == EventType.WORKER_HEARTBEAT)
    assert isinstance(beat, WorkerEvent)
    assert (beat.pid, beat.freq, beat.hostname) == (1, 0.02, "w1")


def _app(events: bool) -> App:
    app = App("evt", broker="memory://", backend="memory://", events=events)

    @app.task(name="evt.ok")
    async def ok(x: int) -> int:
        return x

    @app.task(name="evt.reject")
    async def reject() -> None:
        raise Reject("not today", requeue=False)

    return app


async def test_worker_events_on_memory() -> None:
    app = _app(events=True)
    async with app, follow(app) as feed:
        async with start_worker(app, name="w@mem"):
            r = await app.send_task("evt.ok", args=[1])
            assert await r.get(timeout=5) == 1
            rejected = await app.send_task("evt.reject")
            revoked = await app.send_task("evt.ok", args=[2], countdown=0.3)
            await app.revoke([revoked.id])
            await asyncio.sleep(0.6)
        seen = []
        async with asyncio.timeout(5):
            async for event in feed:
                seen.append(event)
                if event.type == EventType.WORKER_OFFLINE:
                    break
    kinds: list[tuple[str, str | None]] = [(e.type, getattr(e, "task_id", None)) for e in seen]
    assert kinds.index(("worker-online", None)) < kinds.index(("task-received", r.id))
    assert kinds.index(("task-received", r.id)) < kinds.index(("task-started", r.id))
    assert kinds.index(("task-started", r.id)) < kinds.index(("task-succeeded", r.id))
    for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
        assert (kind, r.id) in kinds
    assert ("task-rejected", rejected.id) in kinds
    assert ("task-revoked", revoked.id) in kinds
    assert kinds[-1] == (EventType.WORKER_OFFLINE, None)
    done = next(e for e in seen if e.type == "task-succeeded")
    assert isinstance(done, TaskEvent)
    assert (done.hostname, done.queue, done.task) == ("w@mem", "default", "evt.ok")
    assert done.runtime is not None


async def test_events_off_records_nothing() -> None:
    app = _app(events=False)
    async with app, start_worker(app) as worker:
        r = await app.send_task("evt.ok", args=[1])
        assert await r.get(timeout=5) == 1
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    assert worker.events is None
    assert list(broker.event_log) == []


async def test_worker_option_overrides_the_setting() -> None:
    app = _app(events=False)
    async with app, start_worker(app, events=True):
        r = await app.send_task("evt.ok", args=[1])
        assert await r.get(timeout=5) == 1
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    kinds = [e.type for record in broker.event_log for e in decode_record(record)[0]]
    assert "task-sent" not in kinds  # the producer's setting is off
    assert {"worker-online", "task-received", "task-succeeded", "worker-offline"} <= set(kinds)
