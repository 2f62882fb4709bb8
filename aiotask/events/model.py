"""Typed monitoring events and their wire form.

Events are observations, not state: a lost or duplicated event changes no task. They travel
through the broker's capped event stream (`brokers.base.EventStream`) as records, each holding
the events of one flush. An event, as `aiotask events --json` prints it:

    {"type": "task-succeeded", "timestamp": 1764430000.123, "hostname": "aiotask@web-1-4242",
     "task_id": "...", "task": "proj.add", "queue": "default", "runtime": 0.0012, "retries": 0}

Keys that do not apply to a type (runtime on task-sent, ...) are left out, not null. A record
is one JSON document, in one of three forms (a follower in another language needs only this):

- compact, what workers send (one emitter, tuples encoded as they were recorded: one orjson
  call per flush, a fraction of the CPU of one object per event):
  `{"hostname": H, "events": [entry, ...]}`, each entry one of
  `[type, timestamp, task_id, task, queue, runtime | null, {other keys} | null]` (one event;
  a `worker-*` entry has "" for task_id, task and queue), the same with an eighth item, the
  timestamp of the task's task-started (two events: task-started, then this one), or
  `[type, timestamp, [[task_id, task, queue, {other keys} | null], ...]]` (one event of that
  type and instant per task: the task-received events of one receive);
- an array of event objects (what producers send for task-sent);
- one event object.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import orjson

from aiotask._event_types import EventType
from aiotask._urls import redact

#: An exception message in an event is cut to this many characters (after redaction).
MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something happened to one task: sent, received, started, or one of its outcomes."""

    type: EventType
    timestamp: float
    #: who emitted it: the worker's name (`-n`), or `host-pid` of a producer
    hostname: str
    task_id: str
    task: str
    queue: str
    #: seconds the task ran (succeeded, failed, retried)
    runtime: float | None = None
    #: retries done before this run (the message's `retries`)
    retries: int | None = None
    #: failed / retried: the exception's type name and its message (redacted, truncated)
    exception_type: str | None = None
    exception: str | None = None
    #: retried: when the next attempt is due; sent: the message's eta, if any
    eta: float | None = None
    #: revoked / rejected: why
    reason: str | None = None
    #: sent / received, for a task of a workflow: its canvas links (see `Message`)
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    #: sent: the arguments as JSON text, cut to aiotask.history.MAX_TEXT characters
    args: str | None = None
    kwargs: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """A worker came online, is alive (every worker_heartbeat_interval), or went offline."""

    type: EventType
    timestamp: float
    hostname: str
    pid: int
    queues: tuple[str, ...] = ()
    #: tasks running now, and tasks finished since the worker started
    active: int = 0
    processed: int = 0
    #: seconds between two heartbeats
    freq: float | None = None


Event = TaskEvent | WorkerEvent

_TASK_FIELDS = frozenset(f.name for f in fields(TaskEvent))
_WORKER_FIELDS = frozenset(f.name for f in fields(WorkerEvent))


def safe_message(exc: BaseException | str) -> str:
    """An exception's message fit for an event: URL credentials masked, cut to MAX_MESSAGE."""
    text = redact(str(exc))
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def as_dict(event: Event) -> dict[str, Any]:
    """The JSON object of an event (keys that do not apply are left out)."""
    out: dict[str, Any] = {}
    for name in event.__slots__:
        value = getattr(event, name)
        if value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    out["type"] = str(event.type)
    return out


def encode(event: Event) -> bytes:
    return orjson.dumps(as_dict(event))


def encode_record(events: list[Event]) -> bytes:
    """One record (a JSON array) of events."""
    return orjson.dumps([as_dict(e) for e in events])


def decode_record(raw: bytes) -> tuple[list[Event], int]:
    """The events of a record, and how many of its entries were not events (skipped).

    Raises ValueError when the record is not JSON at all."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not an event record: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        items = _expand(str(data.get("hostname", "")), data["events"])
    else:
        items = data if isinstance(data, list) else [data]
    out: list[Event] = []
    for item in items:
        try:
            out.append(_from_dict(item))
        except ValueError:
            continue
    return out, len(items) - len(out)


def _expand(hostname: str, entries: list[Any]) -> list[Any]:
    """Compact entries -> event objects (an entry of the wrong shape is kept, to be skipped)."""
    out: list[Any] = []
    for entry in entries:
        if not isinstance(entry, list):
            out.append(entry)
        elif len(entry) == 3 and isinstance(entry[2], list):  # one type, one instant, many
            kind, stamp, items = entry
            for item in items:
                if isinstance(item, list) and len(item) == 4:
                    task_id, task, queue, extra = item
                    out.append(_event(hostname, kind, stamp, task_id, task, queue, None, extra))
                else:
                    out.append(item)
        elif len(entry) == 8:  # task-started, then this outcome
            kind, stamp, task_id, task, queue, runtime, extra, started = entry
            out.append(_event(hostname, "task-started", started, task_id, task, queue, None, None))
            out.append(_event(hostname, kind, stamp, task_id, task, queue, runtime, extra))
        elif len(entry) == 7:
            out.append(_event(hostname, *entry))
        else:
            out.append(entry)
    return out


def _event(
    hostname: str,
    kind: Any,
    stamp: Any,
    task_id: Any,
    task: Any,
    queue: Any,
    runtime: Any,
    extra: Any,
) -> dict[str, Any]:
    event = {"type": kind, "timestamp": stamp, "hostname": hostname}
    if task_id:
        event.update(task_id=task_id, task=task, queue=queue)
    if runtime is not None:
        event["runtime"] = runtime
    if isinstance(extra, dict):
        event.update(extra)
    return event


def decode(raw: bytes) -> Event:
    """An event from its wire form; unknown keys (a newer emitter) are ignored.

    Raises ValueError for anything that is not an event of a known type.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not an event: {exc}") from None
    return _from_dict(data)


def _from_dict(data: object) -> Event:
    if not isinstance(data, dict):
        raise ValueError("not an event: not a JSON object")
    try:
        kind = EventType(str(data.get("type")))
    except ValueError:
        raise ValueError(f"unknown event type {data.get('type')!r}") from None
    data["type"] = kind
    try:
        if kind.startswith("task-"):
            return TaskEvent(**{k: v for k, v in data.items() if k in _TASK_FIELDS})
        data["queues"] = tuple(data.get("queues") or ())
        return WorkerEvent(**{k: v for k, v in data.items() if k in _WORKER_FIELDS})
    except TypeError as exc:  # a required key is missing
        raise ValueError(f"malformed {kind} event: {exc}") from None


__all__ = [
    "MAX_MESSAGE",
    "Event",
    "EventType",
    "TaskEvent",
    "WorkerEvent",
    "as_dict",
    "decode",
    "decode_record",
    "encode",
    "encode_record",
    "safe_message",
]
