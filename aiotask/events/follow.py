"""Reading the event stream (`follow`, `follow_after`) and the producer's task-sent events
(`emit_sent`)."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

from aiotask._log import get_logger
from aiotask.brokers.base import EventLog, EventStream
from aiotask.events.emitter import producer_name
from aiotask.events.model import EventType, decode_record
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from aiotask.app import App
    from aiotask.events.model import Event
    from aiotask.protocol import Message

log = get_logger(__name__)


def event_stream(app: App) -> EventStream:
    """The app's broker as an event stream, or a clear error for a broker without one."""
    broker = app.broker
    if not isinstance(broker, EventStream):
        raise ConfigurationError(
            f"the broker of app {app.main!r} ({type(broker).__name__}) has no event stream: "
            "events need a memory://, sqlite://, redis:// or amqp:// broker"
        )
    return broker


@asynccontextmanager
async def follow(app: App) -> AsyncIterator[AsyncIterator[Event]]:
    """Follow the app's events live: subscribed on entering, then iterate.

    async with follow(app) as events:
        async for event in events:
            print(event.type, getattr(event, "task_id", ""))
    """
    await app.connect()
    async with event_stream(app).events() as feed:
        yield _decoded(feed)


async def _decoded(feed: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    async for raw in feed:
        for event in _decode(raw):
            yield event


def _decode(raw: bytes) -> list[Event]:
    try:
        events, skipped = decode_record(raw)
    except ValueError as exc:  # a foreign entry: skip it, keep following
        log.debug("skipping a record that does not decode: %s", exc)
        return []
    if skipped:  # unknown types (a newer emitter) or malformed entries
        log.debug("skipped %d entries that are not events", skipped)
    return events


@asynccontextmanager
async def follow_after(
    app: App, cursor: str | None
) -> AsyncIterator[AsyncIterator[tuple[str | None, list[Event]]]]:
    """Follow the app's events from a saved position: yields (position, events) per record,
    the position to save once those events are handled (see `EventLog.events_after`: None
    means from the oldest entry kept). A stream without positions (RabbitMQ's exchange, the
    memory broker) is followed from now, with None positions: what was emitted while nobody
    followed is lost there."""
    await app.connect()
    stream = event_stream(app)
    if not isinstance(stream, EventLog):
        async with stream.events() as feed:
            yield ((None, _decode(raw)) async for raw in feed)
        return
    async with stream.events_after(cursor) as positioned:
        yield ((position, _decode(raw)) async for position, raw in positioned)


def links(m: Message) -> dict[str, str]:
    """The canvas links a task event carries (only those set: a lone task has none)."""
    out = {}
    if m.root_id and m.root_id != m.id:
        out["root_id"] = m.root_id
    if m.parent_id:
        out["parent_id"] = m.parent_id
    if m.group_id:
        out["group_id"] = m.group_id
    return out


@cache
def _hostname() -> str:
    return producer_name()


async def emit_sent(app: App, messages: Sequence[Message]) -> None:
    """task-sent for a published batch, one record in one call; a failure is logged, never
    raised (the messages are already sent, and events are best-effort)."""
    from aiotask.history import args_text  # with events on only: not in every process

    stamp = time.time()
    host = _hostname()
    batch: list[dict[str, Any]] = []
    for m in messages:
        event: dict[str, Any] = {
            "type": EventType.TASK_SENT,
            "timestamp": stamp,
            "hostname": host,
            "task_id": m.id,
            "task": m.task,
            "queue": m.queue,
        }
        if m.retries:
            event["retries"] = m.retries
        if m.eta is not None:
            event["eta"] = m.eta
        event.update(links(m))
        event["args"], event["kwargs"] = args_text(m.args), args_text(m.kwargs)
        batch.append(event)
    try:
        await event_stream(app).emit_events([orjson.dumps(batch)])
    except Exception as exc:
        log.warning("could not emit %d task-sent events: %s", len(batch), exc)
